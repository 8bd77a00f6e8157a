"""OpenAI-shaped errors for the site application.

Stock `ray.serve.llm` answers an unknown model with FastAPI's bare
`{"detail": ...}` and appends `Internal exception: ray.llm._internal...` to
its 400 messages. A site is a public-facing OpenAI endpoint, so every error
leaves here in the OpenAI envelope with the right status, a user-facing
message and the request id in `X-Request-Id`.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from vllm.exceptions import VLLMClientError, VLLMNotFoundError, VLLMUnprocessableEntityError

from deployments.openai_errors import (
    CatchAllMiddleware,
    error_response,
    http_exception_handler,
    validation_error_handler,
)

_VLLM_PARAMETER = re.compile(r"\s*\(parameter=(?P<name>\w+), value=[^)]*\)\s*$")


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


class ModelFullError(OpenAIHTTPException):
    """Every replica of the model holds its `max_ongoing_requests` and Serve's queue for
    them is full: the site refuses at once rather than queue without bound."""

    def __init__(self, model: str, queued: int, retry_after_s: int):
        super().__init__(
            status_code=503,
            message=f"Model {model!r} is at capacity on this site (its queue of {queued} "
            f"requests is full). Retry after {retry_after_s} s.",
            type="model_at_capacity",
        )
        self.retry_after_s = retry_after_s


async def _openai_exception(request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    coded = UnknownModelError | MissingModelError | ModelFullError
    code = exc.type if isinstance(exc, coded) else None
    # vLLM ends validation messages with "(parameter=NAME, value=...)": make that the param.
    match = _VLLM_PARAMETER.search(exc.message)
    message = exc.message[: match.start()] if match else exc.message
    response = error_response(exc.status_code, message, param=match and match["name"], code=code)
    if isinstance(exc, ModelFullError):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _vllm_client_error(request: Request, exc: VLLMClientError) -> JSONResponse:
    """vLLM's request models raise these from their validators, past FastAPI's validation.

    Stock ray.serve.llm lets them through as 500 (empty prompt, `tools: []`,
    `top_logprobs` without `logprobs`, ...); they are the client's mistake.
    """
    status = (
        404
        if isinstance(exc, VLLMNotFoundError)
        else 422
        if isinstance(exc, VLLMUnprocessableEntityError)
        else 400
    )
    message = str(exc.args[0]) if exc.args else str(exc)
    return error_response(status, message, param=getattr(exc, "parameter", None))


def register_error_handlers(app: FastAPI) -> None:
    """Route every failure of `app` through the OpenAI envelope."""
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(OpenAIHTTPException, _openai_exception)
    app.add_exception_handler(VLLMClientError, _vllm_client_error)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_middleware(CatchAllMiddleware)
