"""The OpenAI error envelope, shared by the site and the gateway.

Every error either of them answers is `{"error": {"message", "type", "param",
"code"}}` with the right status. This module has the envelope and the
handlers both use; it imports neither vLLM nor Ray, so the gateway can run
standalone without them. The site's own handlers are in site_errors.py, the
gateway's in serve_app/errors.py.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import RequestResponseEndpoint
from starlette.responses import JSONResponse, Response

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's `type` for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """The OpenAI envelope as a response."""
    return JSONResponse(error_body(message, status, param, code), status_code=status)


def _field_path(location: tuple) -> str | None:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or None


def describe_request_errors(errors: list[dict]) -> tuple[str, str | None, str]:
    """(message, param, code) of a 400 for pydantic errors of a request body."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return "The request body is not valid JSON.", None, "invalid_json"
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = _field_path(tuple(first.get("loc", ())))
    message = first["msg"].removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    return f"Invalid request: {where}{message}", param, "invalid_value"


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
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


async def catch_all(request: Request, call_next: RequestResponseEndpoint) -> Response:
    try:
        return await call_next(request)
    except Exception:
        request_id = getattr(request.state, "request_id", None) or request.headers.get(
            "x-request-id", "unknown"
        )
        logger.exception("unhandled error in request %s", request_id)
        return error_response(
            500, f"The server failed to process the request (request id {request_id})."
        )
