"""Bulk requests: many items in one request, spread over the sites.

Three shapes, one mechanism. `POST /v1/chat/completions/batch` takes vLLM's
shape (`messages` is a list of conversations, every other field shared) and
answers with one choice per conversation, at its `index`; `/v1/completions`
with a list `prompt` answers each prompt's choices at `prompt index * n +
choice`, as OpenAI does; `/v1/embeddings` with a list `input` goes out in
slices of `bulk.embedding_inputs_per_request`. A single server runs such a
request on one engine; here each item is an ordinary request through the
gateway's request path (`workflows.calls.Calls`): placed on its own, so a bulk
of 200 fills every site that serves the model, counted against the caller's
limits and written to the ledger like any other. At most `bulk.concurrency`
of them are in flight at once. A conversation or prompt that fails gets an
`error` in its choice and the others still answer; embeddings have no such
shape, so a failed slice fails the request with its error. A bulk larger
than `bulk.max_items` is refused with 413: the Batch API is made for those,
and keeps going when the caller does not.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.config_loading import describe_validation_errors
from serve_app.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.inference import not_unicode
from serve_app.protocol import (
    BulkChatChoice,
    BulkChatCompletionRequest,
    BulkChatCompletionResponse,
    BulkCompletionChoice,
    BulkCompletionResponse,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIModel,
    Usage,
)
from serve_app.workflows.calls import Answer, CallFailedError, Calls

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


async def bulk_chat_completion(
    calls: Calls, body: BulkChatCompletionRequest
) -> BulkChatCompletionResponse:
    """Every conversation of `body` through the request path, `bulk.concurrency` at once."""
    _within_max_items(calls, len(body.messages), "messages", "conversations")
    _encodable(body)
    items = [_conversation(body, index) for index in range(len(body.messages))]
    answers = await spread(calls, CHAT, items)
    return BulkChatCompletionResponse(
        id=f"chatcmpl-bulk-{_request_id(calls.request)}",
        created=int(time.time()),
        model=body.model,
        choices=[_chat_choice(index, answer) for index, answer in enumerate(answers)],
        usage=summed_usage(answers),
    )


async def bulk_completion(
    calls: Calls, body: CompletionRequest, prompts: Sequence[str | list[int]]
) -> BulkCompletionResponse:
    """Each of `prompts` (`body.prompts()`) a completion of its own, its choices renumbered."""
    _within_max_items(calls, len(prompts), "prompt", "prompts")
    _encodable(body)
    items = [body.model_copy(update={"prompt": prompt}) for prompt in prompts]
    answers = await spread(calls, COMPLETIONS, items)
    per_prompt = body.n or 1
    choices: list[BulkCompletionChoice] = []
    for index, answer in enumerate(answers):
        first = index * per_prompt
        if not answer.ok:
            error = answer.error
            choices += [
                BulkCompletionChoice(index=first + j, error=error) for j in range(per_prompt)
            ]
            continue
        for choice in answer.body["choices"]:
            numbered = {**choice, "index": first + choice["index"]}
            choices.append(BulkCompletionChoice.model_validate(numbered))
    return BulkCompletionResponse(
        id=f"cmpl-bulk-{_request_id(calls.request)}",
        created=int(time.time()),
        model=body.model,
        choices=choices,
        usage=summed_usage(answers),
    )


async def bulk_embedding(
    calls: Calls, body: EmbeddingRequest, inputs: Sequence[str | list[int]]
) -> JSONResponse:
    """`inputs` (a list `input`) in slices, each placed on its own; the embeddings in order,
    or the first failed slice's error for the whole."""
    _encodable(body)
    data, usage, first = await embed(calls, body, inputs)
    # An embedding's usage has no completion tokens.
    shaped = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    return JSONResponse({**first, "data": data, "usage": shaped})


async def embed(
    calls: Calls, body: EmbeddingRequest, inputs: Sequence[str | list[int]]
) -> tuple[list[dict], Usage, dict]:
    """Every input's embedding object, in order, from slices of
    `bulk.embedding_inputs_per_request` placed on their own; the usage summed, and the
    first slice's answer (its model and id). A failed slice raises `CallFailedError`."""
    size = calls.inference.config.bulk.embedding_inputs_per_request
    starts = range(0, len(inputs), size)
    items = [body.model_copy(update={"input": list(inputs[at : at + size])}) for at in starts]
    answers = await spread(calls, EMBEDDINGS, items)
    for at, answer in zip(starts, answers, strict=True):
        if not answer.ok:
            end = min(at + size, len(inputs))
            raise CallFailedError(f"embedding of inputs {at} to {end - 1}", answer)
    data = [
        {**embedding, "index": at + embedding["index"]}
        for at, answer in zip(starts, answers, strict=True)
        for embedding in answer.body["data"]
    ]
    return data, summed_usage(answers), answers[0].body


async def spread(calls: Calls, path: str, items: Sequence[OpenAIModel]) -> list[Answer]:
    """`items` through the request path, `bulk.concurrency` at once; answers in order.

    The model is checked once first: an unknown model is one 404 for the
    whole, not one per item.
    """
    model = items[0].model
    federation = calls.inference.federation
    federation.policy.require_model(calls.caller, model)
    if not federation.serves(model, calls.site):
        raise federation.unknown_model(calls.caller, model, calls.site)
    running = asyncio.Semaphore(calls.inference.config.bulk.concurrency)

    async def answer(item: OpenAIModel) -> Answer:
        async with running:
            # Its ledger row carries the bulk request's id, as every item's does.
            return await calls.call(path, item)

    return await asyncio.gather(*(answer(item) for item in items))


def summed_usage(answers: Sequence[Answer]) -> Usage:
    used = [answer.usage for answer in answers]
    return Usage(**{key: sum(u.get(key) or 0 for u in used) for key in USAGE_KEYS})  # type: ignore[arg-type]


def _within_max_items(calls: Calls, count: int, param: str, what: str) -> None:
    most = calls.inference.config.bulk.max_items
    if count > most:
        raise PayloadTooLargeError(
            f"A bulk request holds at most {most} {what}; this one has {count}. Send more as "
            "a batch (POST /v1/files, then /v1/batches).",
            param=param,
        )


def _encodable(body: OpenAIModel) -> None:
    """A string no UTF-8 can carry is the whole request's 400, naming where it is, not one
    item's failure."""
    try:
        body.model_dump_json()
    except PydanticSerializationError:
        raise not_unicode(body) from None


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or secrets.token_hex(8)


def _conversation(body: BulkChatCompletionRequest, index: int) -> ChatCompletionRequest:
    """Conversation `index` as a chat completion; 400 naming it if the shared fields and
    it do not make one (a field only a single chat completion checks, such as `tools`)."""
    try:
        return body.conversation(index)
    except ValidationError as exc:
        raise InvalidRequestError(
            f"messages[{index}]: {describe_validation_errors(exc)}", param=f"messages.{index}"
        ) from None


def _chat_choice(index: int, answer: Answer) -> BulkChatChoice:
    """A site's answer to one conversation as its choice."""
    if not answer.ok:
        return BulkChatChoice(index=index, error=answer.error)
    (first,) = answer.body["choices"]  # n is 1
    return BulkChatChoice.model_validate({**first, "index": index})
