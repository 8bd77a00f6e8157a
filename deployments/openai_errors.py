"""OpenAI-shaped errors for the site application.

Stock `ray.serve.llm` answers an unknown model with FastAPI's bare
`{"detail": ...}` and appends `Internal exception: ray.llm._internal...` to
its 400 messages. A site is a public-facing OpenAI endpoint, so every error
leaves here as `{"error": {"message", "type", "param", "code"}}` with the
right status, a user-facing message and the request id in `X-Request-Id`.
`serve_app` (the ingress) builds its error hierarchy on `error_body`.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import JSONResponse, Response

logger = logging.getLogger(__name__)
_VLLM_PARAMETER = re.compile(r"\s*\(parameter=(?P<name>\w+), value=[^)]*\)\s*$")

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


class UnknownModelError(OpenAIHTTPException):
    """A request named a model this endpoint does not serve."""

    def __init__(self, model: str, available: list[str]):
        super().__init__(
            status_code=404,
            message=f"The model {model!r} does not exist. Available models: "
            f"{', '.join(sorted(available))}.",
            type="model_not_found",
        )


class MissingModelError(OpenAIHTTPException):
    """A request named no model while several are served."""

    def __init__(self, available: list[str]):
        super().__init__(
            status_code=400,
            message="The request must name a `model`; this endpoint serves "
            f"{', '.join(sorted(available))}.",
            type="missing_model",
        )


def _json_error(status: int, message: str, param: str | None = None, code: str | None = None):
    return JSONResponse(error_body(message, status, param, code), status_code=status)


def _field_path(location: tuple) -> str | None:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _json_error(400, "The request body is not valid JSON.", code="invalid_json")
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = _field_path(tuple(first.get("loc", ())))
    message = first["msg"].removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    return _json_error(400, f"Invalid request: {where}{message}", param=param, code="invalid_value")


async def _openai_exception(request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    code = exc.type if isinstance(exc, UnknownModelError | MissingModelError) else None
    # vLLM ends validation messages with "(parameter=NAME, value=...)": make that the param.
    match = _VLLM_PARAMETER.search(exc.message)
    message = exc.message[: match.start()] if match else exc.message
    return _json_error(exc.status_code, message, param=match and match["name"], code=code)


async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}."
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
    response = _json_error(exc.status_code, message)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _catch_all(request: Request, call_next: RequestResponseEndpoint) -> Response:
    try:
        return await call_next(request)
    except Exception:
        request_id = getattr(request.state, "request_id", None) or request.headers.get(
            "x-request-id", "unknown"
        )
        logger.exception("unhandled error in request %s", request_id)
        return _json_error(
            500, f"The server failed to process the request (request id {request_id})."
        )


def register_error_handlers(app: FastAPI) -> None:
    """Route every failure of `app` through the OpenAI envelope."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OpenAIHTTPException, _openai_exception)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_middleware(BaseHTTPMiddleware, dispatch=_catch_all)
