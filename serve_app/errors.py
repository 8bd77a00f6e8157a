"""The gateway's one error path: typed errors in, OpenAI envelopes out.

Code raises a `GatewayError` subclass; the handlers registered here turn it,
FastAPI's validation errors, Starlette's routing errors and any exception
nothing handled into `{"error": {"message", "type", "param", "code"}}` with
the right status. The envelope, the validation and routing handlers and the
catch-all are the site's too (`deployments.openai_errors`), so a client sees
the same errors from a site and from the gateway. A `GatewayError` gives its
envelope as a response (`response`), as data (`body`: a batch's error line)
or as the last event of a stream (`sse_event`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from deployments.openai_errors import (
    CatchAllMiddleware,
    ErrorResponse,
    error_body,
    error_response,
    http_exception_handler,
    sse_error_event,
    validation_error_handler,
)


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix status and code."""

    status = 500
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param, self.code)

    def response(self) -> JSONResponse:
        response = error_response(self.status, self.message, self.param, self.code)
        if self.retry_after_s is not None:
            response.headers["Retry-After"] = str(self.retry_after_s)
        return response

    def sse_event(self) -> bytes:
        return sse_error_event(self.message, self.status, self.param, self.code)


class InvalidRequestError(GatewayError):
    status = 400
    code = "invalid_value"


class UnsupportedApiError(InvalidRequestError):
    """The model does not answer the route's API (its `capabilities.apis`)."""

    code = "unsupported_api"


class StreamingUnsupportedError(InvalidRequestError):
    """A stream for a model that only sites reached through Globus Compute serve."""

    code = "stream_unsupported"


class AuthenticationError(GatewayError):
    """No credential, or one that is not valid: the client must sign in again."""

    status = 401
    code = "invalid_api_key"

    def response(self) -> JSONResponse:
        response = super().response()
        response.headers["WWW-Authenticate"] = 'Bearer realm="first"'
        return response


class PermissionDeniedError(GatewayError):
    """A valid credential that the policy does not allow this."""

    status = 403
    code = "permission_denied"


class RateLimitError(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class AuthUnavailableError(GatewayError):
    """Globus Auth cannot be reached, so a new token cannot be checked now."""

    status = 503
    code = "auth_unavailable"


class ModelNotFoundError(GatewayError):
    status = 404
    code = "model_not_found"


class NotFoundError(GatewayError):
    """A file or batch that does not exist, or is not the caller's."""

    status = 404
    code = "not_found"


class SiteNotFoundError(GatewayError):
    status = 404
    code = "site_not_found"


class CollectionNotFoundError(GatewayError):
    status = 404
    code = "collection_not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    code = "payload_too_large"


class ConflictError(GatewayError):
    status = 409
    code = "conflict"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    """A site answered with something that is not an OpenAI response."""

    status = 502
    code = "upstream_error"


class NoSiteAvailableError(GatewayError):
    """No healthy site can take the request now; the client should retry later."""

    status = 503
    code = "no_site_available"


class ModelStartingError(GatewayError):
    """The model runs nowhere yet; a Slurm job for it is queued or starting."""

    status = 503
    code = "model_starting"


class ModelStartFailedError(GatewayError):
    """The model's Slurm jobs failed to start, or could not be submitted."""

    status = 503
    code = "model_start_failed"


class UpstreamTimeoutError(GatewayError):
    status = 504
    code = "upstream_timeout"


# Anthropic's error `type` per status (its Messages API; 529 is its own "overloaded").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(status: int, message: str, request_id: str | None = None) -> dict:
    """Anthropic's error envelope, `{"type": "error", "error": {"type", "message"}}`: what
    the Messages routes answer instead of OpenAI's (the `anthropic` SDK reads this one)."""
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


# Statuses every API route may answer, for the OpenAPI schema.
DOCUMENTED_ERRORS = {
    400: "Malformed request: not JSON, a missing or invalid field, or a model that does not "
    "support the route's API (unsupported_api).",
    401: "Missing, malformed, expired or unknown credential (API key or Globus token).",
    403: "The credential is valid but the policy does not allow this caller or model.",
    404: "Unknown model, site, file, batch, collection or route.",
    409: "The file is the input of a batch still running.",
    413: "Request body larger than the gateway accepts.",
    415: "Request body is not application/json.",
    429: "Over a request or token limit; see Retry-After.",
    500: "The gateway failed; the message carries the request id.",
    502: "A site answered with something that is not an OpenAI response.",
    503: "No site can serve the model now (it may be starting), or Globus Auth cannot be "
    "reached; see Retry-After.",
    504: "The site did not answer in time.",
}


async def gateway_error_handler(request: Request, exc: GatewayError) -> JSONResponse:
    services = getattr(request.app.state, "services", None)
    if services is not None:
        route = getattr(request.scope.get("route"), "path", "other")
        services.metrics.refused(exc.status, exc.code, route)
    return exc.response()


def register_error_handlers(app: FastAPI, invalid_request=validation_error_handler) -> None:
    """Route every failure of `app` through the OpenAI envelope.

    `invalid_request` answers a body that is not a valid request. The
    catch-all goes in before any other middleware, so it runs inside them:
    its 500 carries the request id an outer one chose.
    """
    app.add_exception_handler(GatewayError, gateway_error_handler)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_middleware(CatchAllMiddleware, server="gateway")


def documented_errors(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for error statuses (all of them by default)."""
    chosen = statuses or tuple(DOCUMENTED_ERRORS)
    return {
        status: {"model": ErrorResponse, "description": DOCUMENTED_ERRORS[status]}
        for status in chosen
    }
