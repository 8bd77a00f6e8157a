"""A Responses or Messages request through the gateway's request path, and stored responses.

Each request becomes one chat completion (serve_app/translation/responses.py,
messages.py) sent like any other (`workflows.calls.Calls`: access, limits,
placement, retries, metering, the ledger under the caller's route). A
refusal before the answer starts is the caller's error with its status; a
failure in a stream ends it with the API's own failure events. Stored
responses live in the gateway's store, owned by their caller, so the next
turn of a conversation can go to any site: the gateway, not an engine,
holds the conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from serve_app.access.policy import Principal
from serve_app.errors import NotFoundError
from serve_app.inference import EVENT_STREAM
from serve_app.protocol import ChatCompletionRequest, ChatMessage
from serve_app.routing import SITE_HEADER
from serve_app.routing.federation import Federation
from serve_app.sse import event_data, sse_events
from serve_app.store import ResponseStore, StoredResponse
from serve_app.translation import messages, responses
from serve_app.workflows.bulk import CHAT
from serve_app.workflows.calls import Answer, CallFailedError, Calls, answer_of


class StreamTranslator(Protocol):
    def start(self) -> list[bytes]: ...
    def take(self, chunk: dict) -> list[bytes]: ...
    def finish(self) -> list[bytes]: ...
    def fail(self, error: dict) -> list[bytes]: ...


def json_response(model: BaseModel, site: str | None = None) -> Response:
    """A vendor's model as the answer (its unset fields left out, as the vendors do)."""
    headers = {SITE_HEADER: site} if site else None
    return Response(
        model.model_dump_json(exclude_none=True), media_type="application/json", headers=headers
    )


async def answer(calls: Calls, body: ChatCompletionRequest) -> Answer:
    """A non-streamed chat completion; its refusal raised as the caller's own error."""
    result = await calls.call(CHAT, body)
    if not result.ok:
        raise CallFailedError(None, result)
    return result


async def translated_stream(
    calls: Calls,
    body: ChatCompletionRequest,
    translator: StreamTranslator,
    on_done: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """A streamed chat completion as `translator`'s events; a refusal before the stream
    starts is raised (the caller gets its status); `on_done` runs once it completed."""
    source = await calls.inference.forward(
        calls.request, CHAT, body, calls.caller, calls.site, calls.route
    )
    if not isinstance(source, StreamingResponse):
        if not source.body:  # the caller went away: nobody reads this
            return source
        raise CallFailedError(None, answer_of(source, time.time(), time.monotonic()))
    headers = {SITE_HEADER: site} if (site := source.headers.get(SITE_HEADER)) else None
    events = _relay(source, translator, on_done)
    return StreamingResponse(events, media_type=EVENT_STREAM, headers=headers)


async def _relay(
    source: StreamingResponse,
    translator: StreamTranslator,
    on_done: Callable[[], Awaitable[None]] | None,
) -> AsyncIterator[bytes]:
    # The events of one site chunk go out in one write (a chunk is often several).
    body = source.body_iterator
    try:
        yield b"".join(translator.start())
        async for event in sse_events(body):
            if event.startswith(b":"):  # a keep-alive comment: clients skip it
                yield event + b"\n\n"
                continue
            chunk = event_data(event)
            if chunk is None:  # [DONE]
                continue
            if isinstance(chunk.get("error"), dict):
                yield b"".join(translator.fail(chunk["error"]))
                return
            if events := translator.take(chunk):
                yield b"".join(events)
        last = b"".join(translator.finish())
        if on_done is not None:  # stored before the client hears it completed
            await on_done()
        yield last
    finally:
        # The client left mid-way: release the site's stream (and its meter) now.
        await body.aclose()  # type: ignore[attr-defined]


# -- Responses ----------------------------------------------------------------


class ResponsesService:
    """`/v1/responses`: each turn one chat completion after the stored conversation."""

    def __init__(self, store: ResponseStore, federation: Federation):
        self.store = store
        self.federation = federation

    async def create(self, calls: Calls, request: responses.ResponseCreateRequest) -> Response:
        history = await self._conversation(calls.caller, request.previous_response_id)
        conversation = [*history, *responses.input_messages(request.input)]
        reasons = self._reasons(request.model, calls.site)
        body = responses.chat_request(request, conversation, reasons)
        turn = responses.Turn(id=responses.new_id("resp"), created_at=time.time(), request=request)
        if request.stream:
            stream = responses.ResponseStream(turn)

            async def keep() -> None:
                if stream.response is not None:
                    await self._keep(calls.caller, turn, stream.response, conversation)

            return await translated_stream(calls, body, stream, keep)
        result = await answer(calls, body)
        response = responses.response_from_chat(turn, result.body)
        await self._keep(calls.caller, turn, response, conversation)
        return json_response(response, result.site)

    def _reasons(self, model: str, site: str | None) -> bool:
        """Whether the model (or the one an alias names) reasons: `reasoning.effort` goes on
        to such models only."""
        capabilities = self.federation.capabilities_of(self.federation.resolve(model), site)
        return bool(capabilities and capabilities.reasoning)

    async def _conversation(self, caller: Principal, previous: str | None) -> list[ChatMessage]:
        if previous is None:
            return []
        stored = await self._stored(caller, previous, param="previous_response_id")
        return [ChatMessage.model_validate(message) for message in stored.conversation]

    async def _keep(
        self,
        caller: Principal,
        turn: responses.Turn,
        response: Any,
        conversation: list[ChatMessage],
    ) -> None:
        if turn.request.store is False:
            return
        following = [*conversation, *responses.output_messages(response)]
        stored = StoredResponse(
            id=turn.id,
            user=caller.user,
            created_at=turn.created_at,
            response=response.model_dump(mode="json", exclude_none=True),
            input_items=responses.input_items(turn.request.input),
            conversation=[message.model_dump(exclude_none=True) for message in following],
        )
        await asyncio.to_thread(self.store.put_response, stored)

    async def _stored(self, caller: Principal, response_id: str, param: str) -> StoredResponse:
        stored = await asyncio.to_thread(self.store.get_response, response_id, caller.user)
        if stored is None:  # another user's is not found either
            raise NotFoundError(f"No response with id {response_id!r}.", param=param)
        return stored

    async def retrieve(self, caller: Principal, response_id: str) -> dict:
        return (await self._stored(caller, response_id, param="response_id")).response

    async def delete(self, caller: Principal, response_id: str) -> dict:
        if not await asyncio.to_thread(self.store.delete_response, response_id, caller.user):
            raise NotFoundError(f"No response with id {response_id!r}.", param="response_id")
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(
        self,
        caller: Principal,
        response_id: str,
        page: InputItemsPage,
    ) -> dict:
        """The response's input items, a page of them (OpenAI's list: newest first by default)."""
        items = (await self._stored(caller, response_id, param="response_id")).input_items
        ordered = items if page.order == "asc" else items[::-1]
        if page.after is not None:
            ids = [item.get("id") for item in ordered]
            if page.after not in ids:
                raise NotFoundError(f"No input item with id {page.after!r}.", param="after")
            ordered = ordered[ids.index(page.after) + 1 :]
        data = ordered[: page.limit]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > len(data),
        }


class InputItemsPage(BaseModel):
    """Which input items to list: after an id, how many, in which order."""

    after: str | None = None
    limit: int = 20
    order: Literal["asc", "desc"] = "desc"


# -- Messages -----------------------------------------------------------------


async def create_message(calls: Calls, request: messages.MessagesRequest) -> Response:
    """`/v1/messages`: one chat completion, its answer as Anthropic's message."""
    body = messages.chat_request(request)
    turn = messages.Turn(id=messages.new_message_id(), request=request)
    if request.stream:
        return await translated_stream(calls, body, messages.MessageStream(turn))
    result = await answer(calls, body)
    return json_response(messages.message_from_chat(turn, result.body), result.site)


async def count_tokens(calls: Calls, request: messages.CountTokensRequest) -> Response:
    """The prompt's tokens, as the model's own tokenizer and chat template count them: a
    one-token completion of the prompt at a site (the gateway holds no tokenizer)."""
    body = messages.chat_request(request).model_copy(update={"max_tokens": 1})
    result = await answer(calls, body)
    return json_response(messages.token_count(result.body))
