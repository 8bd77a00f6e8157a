"""One model call of a workflow, through the gateway's request path, as data.

A workflow makes many calls per request and decides itself what a failed
one means (a bulk request gives it its own choice; a tribunal fails whole),
so a call never raises for a refusal: `Calls.call` turns the gateway's own errors
and the site's error answers alike into an `Answer` carrying OpenAI's error
envelope, its status, the site that answered and when.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from deployments.openai_errors import ErrorDetail, error_body
from serve_app.access import Principal
from serve_app.errors import GatewayError
from serve_app.inference import InferenceService
from serve_app.protocol import OpenAIModel
from serve_app.routing import SITE_HEADER


@dataclass(frozen=True)
class Answer:
    """A call's outcome: the site's JSON answer, or an error in OpenAI's envelope."""

    status: int
    body: dict
    site: str | None
    started_at: float  # Unix time
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> ErrorDetail:
        """The error of a failed call (a site's envelope kept as it sent it)."""
        detail = self.body.get("error") if isinstance(self.body.get("error"), dict) else {}
        message = detail.get("message") or f"The site answered HTTP {self.status}."
        envelope = error_body(message, self.status, detail.get("param"), detail.get("code"))
        return ErrorDetail.model_validate(envelope["error"])

    @property
    def usage(self) -> dict:
        return (self.body.get("usage") or {}) if self.ok else {}


class CallFailedError(GatewayError):
    """A call's refusal as the workflow's own, with the call's status, naming the call
    (`what`), or as it came when the call is the whole request (`what` None)."""

    def __init__(self, what: str | None, answer: Answer):
        error = answer.error
        message = f"The {what} failed: {error.message}" if what else error.message
        super().__init__(message, param=error.param)
        self.status = answer.status
        self.code = error.code


@dataclass(frozen=True)
class Calls:
    """What every call of one workflow request shares: the request path, the calling
    request (its id goes in every ledger row), the caller, and the pinned site if any."""

    inference: InferenceService
    request: Request
    caller: Principal
    site: str | None = None
    route: str | None = None  # the caller's route, where it is not the site's (see forward)

    async def call(self, path: str, body: OpenAIModel) -> Answer:
        """`body` through `InferenceService.forward` (placed, limited, metered, in the
        ledger), not streamed; its outcome as an `Answer`."""
        started_at, started = time.time(), time.monotonic()
        try:
            response = await self.inference.forward(
                self.request, path, body, self.caller, self.site, self.route
            )
        except GatewayError as exc:
            return Answer(exc.status, exc.body(), None, started_at, time.monotonic() - started)
        return answer_of(response, started_at, started)


def answer_of(response: Response, started_at: float, started: float) -> Answer:
    """A whole (not streamed) answer of `InferenceService.forward` as an `Answer`; a call
    sent at Unix time `started_at`, monotonic `started`."""

    def answer(status: int, content: dict, at: str | None = None) -> Answer:
        return Answer(status, content, at, started_at, time.monotonic() - started)

    if not response.body:  # the caller went away: nobody reads this
        return answer(499, error_body("Cancelled: the client went away.", 499))
    at = response.headers.get(SITE_HEADER)
    try:
        content = json.loads(response.body)
    except ValueError:
        return answer(502, error_body("The site's answer was not JSON.", 502), at)
    if not isinstance(content, dict):
        return answer(502, error_body("The site's answer was not a JSON object.", 502), at)
    return answer(response.status_code, content, at)
