"""Bulk chat completions: many conversations in one request, spread over the sites.

`POST /v1/chat/completions/batch` takes vLLM's shape (`messages` is a list of
conversations, every other field shared) and answers with one choice per
conversation, at its `index`. vLLM runs such a request on one engine; here
each conversation is an ordinary chat completion through the gateway's
request path (`InferenceService.forward`): placed on its own, so a bulk of
200 fills every site that serves the model, counted against the caller's
limits and written to the ledger like any other. At most
`bulk.concurrency` of them are in flight at once. A conversation that fails
gets an `error` in its choice; the others still answer. A bulk request
larger than `bulk.max_items` is refused with 413: the Batch API is made for
those, and keeps going when the caller does not.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from pydantic import ValidationError
from starlette.requests import Request

from deployments.config_loading import describe_validation_errors
from deployments.openai_errors import ErrorDetail, error_type
from serve_app.access import Principal
from serve_app.errors import GatewayError, InvalidRequestError, PayloadTooLargeError
from serve_app.inference import InferenceService
from serve_app.protocol import (
    BulkChatChoice,
    BulkChatCompletionRequest,
    BulkChatCompletionResponse,
    ChatCompletionRequest,
    Usage,
)

CHAT = "/v1/chat/completions"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


async def bulk_chat_completion(
    inference: InferenceService,
    request: Request,
    body: BulkChatCompletionRequest,
    caller: Principal,
    site: str | None,
) -> BulkChatCompletionResponse:
    """Every conversation of `body` through the request path, `bulk.concurrency` at once."""
    config = inference.config.bulk
    count = len(body.messages)
    if count > config.max_items:
        raise PayloadTooLargeError(
            f"A bulk request holds at most {config.max_items} conversations; this one has "
            f"{count}. Send more as a batch (POST /v1/files, then /v1/batches).",
            param="messages",
        )
    federation = inference.federation
    federation.policy.require_model(caller, body.model)
    if not any(body.model in state.models for state in federation.sites.values()):
        raise federation.unknown_model(caller, body.model, site)  # one 404, not one per item
    request_id = request.scope.get("state", {}).get("request_id") or secrets.token_hex(8)
    items = [_conversation(body, index) for index in range(count)]
    running = asyncio.Semaphore(config.concurrency)

    async def answer(index: int) -> tuple[BulkChatChoice, dict]:
        async with running:
            try:
                # Its ledger row carries the bulk request's id, as every item's does.
                response = await inference.forward(request, CHAT, items[index], caller, site)
            except GatewayError as exc:
                return _failed(index, exc.status, exc.message, exc.param, exc.code), {}
        if not response.body:  # the caller went away: nobody reads this
            return _failed(index, response.status_code, "Cancelled.", None, None), {}
        return _choice(index, response.status_code, json.loads(response.body))

    answers = await asyncio.gather(*(answer(index) for index in range(count)))
    used = [usage for _, usage in answers]
    return BulkChatCompletionResponse(
        id=f"chatcmpl-bulk-{request_id}",
        created=int(time.time()),
        model=body.model,
        choices=[choice for choice, _ in answers],
        usage=Usage(
            **{key: sum(u.get(key, 0) for u in used) for key in USAGE_KEYS}  # type: ignore[arg-type]
        ),
    )


def _conversation(body: BulkChatCompletionRequest, index: int) -> ChatCompletionRequest:
    """Conversation `index` as a chat completion; 400 naming it if the shared fields and
    it do not make one (a field only a single chat completion checks, such as `tools`)."""
    try:
        return body.conversation(index)
    except ValidationError as exc:
        raise InvalidRequestError(
            f"messages[{index}]: {describe_validation_errors(exc)}", param=f"messages.{index}"
        ) from None


def _choice(index: int, status: int, answer: dict) -> tuple[BulkChatChoice, dict]:
    """A site's answer to one conversation as its choice, and its usage."""
    if status != 200:
        error = answer.get("error") or {}
        message = error.get("message") or f"The site answered HTTP {status}."
        return _failed(index, status, message, error.get("param"), error.get("code")), {}
    (first,) = answer["choices"]  # n is 1
    choice = BulkChatChoice.model_validate({**first, "index": index})
    return choice, answer.get("usage") or {}


def _failed(
    index: int, status: int, message: str, param: str | None, code: str | None
) -> BulkChatChoice:
    detail = ErrorDetail(message=message, type=error_type(status), param=param, code=code)
    return BulkChatChoice(index=index, error=detail)
