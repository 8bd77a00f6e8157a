"""The gateway's one middleware, written against raw ASGI.

Starlette's `BaseHTTPMiddleware` costs a task and a stream copy per request
and hides client disconnects from streaming responses, so the three things
every request needs live here in plain ASGI:

- a request id: the client's `X-Request-Id` or a new one, kept in
  `scope["state"]["request_id"]`, sent to the site and returned to the client
  (under Serve, the proxy chooses it and returns it itself);
- a body limit: a declared `Content-Length` over the limit is refused with
  413 before the body is read, and a chunked body is cut off at the limit;
- a last resort: an exception nothing else handled becomes an OpenAI 500 that
  names the request id, never a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.openai_errors import error_body
from serve_app.errors import GatewayError, PayloadTooLargeError

logger = logging.getLogger(__name__)
REQUEST_ID_HEADER = b"x-request-id"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        echo_request_id: bool = True,
        upload_limits: dict[str, int] | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths that take larger bodies (file uploads), and how large.
        self.upload_limits = upload_limits or {}
        # Serve's HTTP proxy already puts the id (the same one) on every response.
        self.echo_request_id = echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo_request_id:
                    message["headers"] = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != REQUEST_ID_HEADER
                    ] + [id_header]
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        limit = self.upload_limits.get(scope.get("path", ""), self.max_body_bytes)
        if declared > limit:
            await self._refuse(send_with_id, PayloadTooLargeError(_too_large(limit)))
            return
        try:
            await self.app(scope, self._limited(receive, limit), send_with_id)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            if started:
                raise
            message = f"The gateway failed to process the request (request id {request_id})."
            await _send_error(send_with_id, 500, error_body(message, 500))

    async def _refuse(self, send: Send, error: GatewayError) -> None:
        body = error_body(error.message, error.status, error.param, error.code)
        await _send_error(send, error.status, body)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI turns any other exception while reading a body into a 400.
                    raise HTTPException(413, detail=_too_large(limit))
            return message

        return receive_limited


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


async def _send_error(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
