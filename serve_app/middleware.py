"""What every gateway request goes through first, written against raw ASGI.

Starlette's `BaseHTTPMiddleware` costs a task and a stream copy per request
and hides client disconnects from streaming responses, so this is plain ASGI:

- a request id: the client's `X-Request-Id` or a new one, kept in
  `scope["state"]["request_id"]`, sent to the site and returned to the client
  (under Serve, the proxy chooses it and returns it itself);
- a body limit: a declared `Content-Length` over the limit is refused with
  413 before the body is read, and a chunked body is cut off at the limit.

The last resort for unhandled exceptions is the shared catch-all
(`deployments.openai_errors.CatchAllMiddleware`), inside this one.
`until_disconnected` is the other half of a request's life: a handler whose
client has gone stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import PayloadTooLargeError

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
