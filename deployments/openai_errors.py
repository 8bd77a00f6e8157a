"""The OpenAI error envelope, and the handlers the site and the gateway share.

Every error either of them answers is `{"error": {"message", "type", "param",
"code"}}` with the right status, built here from one model (`ErrorResponse`,
which also documents the errors in `/openapi.json`): as a JSON response, or as
the last event of a stream that failed after it started. The handlers here
are the only ones for what every FastAPI app meets (a body that is not JSON or
not valid, an unknown route, an exception nothing handled), so a client sees
the same errors from a site and from the gateway. This module imports neither
vLLM nor Ray, so the gateway can run standalone without them. The site adds
its engine's errors in site_errors.py, the gateway its own in
serve_app/errors.py.
"""

from __future__ import annotations

import logging
from email.message import Message as MediaType
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorDetail


def error_type(status: int) -> str:
    """OpenAI's `type` for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict:
    """The OpenAI envelope as plain data."""
    detail = ErrorDetail(message=message, type=error_type(status), param=param, code=code)
    return ErrorResponse(error=detail).model_dump()


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """The OpenAI envelope as a response."""
    return JSONResponse(error_body(message, status, param, code), status_code=status)


def sse_error_event(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> bytes:
    """The envelope as the last event of a stream that failed after it started."""
    detail = ErrorDetail(message=message, type=error_type(status), param=param, code=code)
    return b"data: " + ErrorResponse(error=detail).model_dump_json().encode() + b"\n\n"


# pydantic names the branch of a union a value failed in the error's location (`str`,
# `list[...]`, `function-after[...]`): a type, not a field, left out of the path.
_BRANCH_LABELS = {"str", "int", "float", "bool", "none", "list", "dict", "constrained-str"}


def field_path(location: tuple | list) -> str | None:
    """pydantic's error location as a dotted field path, the OpenAI `param`."""
    parts = [str(p) for p in location if p != "body" and not _is_branch_label(p)]
    return ".".join(parts) or None


def _is_branch_label(part: object) -> bool:
    return isinstance(part, str) and (part in _BRANCH_LABELS or "[" in part)


def lone_surrogate_at(value: object, location: tuple = ()) -> tuple | None:
    """Where in decoded JSON a string holds a lone UTF-16 surrogate, or None.

    `"a\\ud800b"` is valid JSON and decodes to a Python string, but no UTF-8
    can carry it, so the request cannot be passed on: found only when
    encoding fails, to name the field in the 400.
    """
    if isinstance(value, str):
        return None if value.isascii() or not _has_surrogate(value) else location
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (found := lone_surrogate_at(item, (*location, key))) is not None:
            return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def describe_request_errors(errors: list[dict]) -> tuple[str, str | None, str]:
    """(message, param, code) of a 400 for pydantic errors of a request body."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return "The request body is not valid JSON.", None, "invalid_json"
    # The deepest error is the most specific: a list that failed as its union's list
    # branch says what is wrong inside it; the same value's "not a string" says nothing.
    first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else None
    first = first or {"msg": "invalid request", "loc": ()}
    param = field_path(tuple(first.get("loc", ())))
    message = first["msg"].removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    return f"Invalid request: {where}{message}", param, "invalid_value"


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    media_type = MediaType()
    media_type["content-type"] = content_type
    subtype = media_type.get_content_subtype()
    return media_type.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that is not JSON (415) or not a valid request (400, `param` the field path)."""
    content_type = request.headers.get("content-type")
    if not _is_json(content_type):
        return error_response(
            415,
            f"The request body must be application/json, not {content_type}.",
            code="unsupported_media_type",
        )
    message, param, code = describe_request_errors(list(exc.errors()))
    return error_response(400, message, param=param, code=code)


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI envelope."""
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}."
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
    response = error_response(exc.status_code, message)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


class CatchAllMiddleware:
    """The last resort: an exception nothing handled becomes a 500 naming the request id.

    Plain ASGI (Starlette's `BaseHTTPMiddleware` costs a task and a stream copy
    per request). The request id is the one an outer middleware put in the
    scope's state, else the client's `X-Request-Id`. Once a response has
    started nothing else can be sent, so the exception goes on to the server.
    """

    def __init__(self, app: ASGIApp, server: str = "server"):
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except Exception:
            request_id = _request_id(scope)
            logger.exception("unhandled error in request %s", request_id)
            if started:
                raise
            message = f"The {self.server} failed to process the request (request id {request_id})."
            await error_response(500, message)(scope, receive, send)


def _request_id(scope: Scope) -> str:
    chosen = (scope.get("state") or {}).get("request_id")
    if chosen:
        return str(chosen)
    headers = dict(scope.get("headers") or [])
    return headers.get(b"x-request-id", b"unknown").decode("latin-1")
