"""What every gateway request goes through first, written against raw ASGI.

Starlette's `BaseHTTPMiddleware` costs a task and a stream copy per request
and hides client disconnects from streaming responses, so this is plain ASGI:

- a request id: the client's `X-Request-Id` or a new one, kept in
  `scope["state"]["request_id"]`, sent to the site and returned to the client
  (under Serve, the proxy chooses it and returns it itself);
- a body limit: a declared `Content-Length` over the limit is refused with
  413 before the body is read, and a chunked body is cut off at the limit;
- on Anthropic's routes (`AnthropicErrorMiddleware`), every error in
  Anthropic's envelope: the gateway's one error path writes OpenAI's, and
  this rewrites it on the way out, whichever layer refused.

The last resort for unhandled exceptions is the shared catch-all
(`deployments.openai_errors.CatchAllMiddleware`), inside this one.
`until_disconnected` is the other half of a request's life: a handler whose
client has gone stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import PayloadTooLargeError, anthropic_error_body

T = TypeVar("T")
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and self.echo_request_id:
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
            refusal = PayloadTooLargeError(_too_large(limit)).response()
            await refusal(scope, receive, send_with_id)
            return
        await self.app(scope, self._limited(receive, limit), send_with_id)

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


class AnthropicErrorMiddleware:
    """OpenAI error envelopes from the routes matching `paths` as Anthropic's.

    Only JSON error responses are buffered and rewritten; answers and streams
    pass untouched (a stream's own failure is written in Anthropic's shape by
    its translator).
    """

    def __init__(self, app: ASGIApp, paths: str):
        self.app = app
        self.paths = re.compile(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.paths.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def send_rewritten(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            body = _as_anthropic(body, start["status"], scope)
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_rewritten)


def _as_anthropic(body: bytes, status: int, scope: Scope) -> bytes:
    try:
        error = json.loads(body).get("error")
        message = error["message"]
    except (ValueError, AttributeError, KeyError, TypeError):
        message = body.decode("utf-8", "replace") or f"HTTP {status}"
    request_id = (scope.get("state") or {}).get("request_id")
    return json.dumps(anthropic_error_body(status, str(message), request_id)).encode()


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and answering None) if the client disconnects first.

    Under uvicorn a handler runs on after its client has gone; a generation
    the client no longer waits for must not keep a site busy. (Ray Serve
    cancels the handler itself; this is then a no-op.)
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            return None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
