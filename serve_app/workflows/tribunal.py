"""Tribunal refinement: generate, critique by a panel, revise; called as a chat model.

A tribunal (`tribunals` in the federation config) is listed in /v1/models
under its name; a chat completion on it runs the generator on the caller's
messages, then for each round every critic of the panel at once (each call
placed on whichever site serves its model) and the reviser with the
critiques. Every step is an ordinary chat completion through the gateway's
request path (`workflows.calls.Calls`): limited, metered, in the ledger under
the tribunal request's id. The answer is the last revision as a
`chat.completion` of the tribunal, its usage the sum of every step, and,
with `first_trace: true`, the steps themselves (model, site, text, tokens,
time). With `stream: true` the last revision streams; until it starts,
SSE comments keep clients and proxies from cutting a connection that sends
nothing while the earlier steps run.

Every model is checked before the first call: one the caller may not use is
refused as usual, and one no site can serve (nor start) is a 503 naming it,
before any token is spent.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from deployments.openai_errors import sse_error_event
from serve_app.config import FederationConfig, TribunalConfig
from serve_app.errors import GatewayError, InvalidRequestError, NoSiteAvailableError
from serve_app.inference import EVENT_STREAM, KEEPALIVE_COMMENT
from serve_app.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    StreamOptions,
    TribunalStep,
    Usage,
)
from serve_app.routing import SITE_HEADER
from serve_app.sse import DONE, data_event, event_data, sse_events
from serve_app.workflows.bulk import CHAT, summed_usage
from serve_app.workflows.calls import Answer, CallFailedError, Calls

# Fields of the caller's request a critic does not get: a critique is plain text.
NOT_FOR_CRITICS = {"response_format": None, "logprobs": None, "top_logprobs": None}


def tribunal_named(config: FederationConfig, name: str) -> TribunalConfig | None:
    return next((t for t in config.tribunals if t.name == name), None)


async def chat_completion(
    calls: Calls, body: ChatCompletionRequest
) -> Response | ChatCompletionResponse:
    """A chat completion on a model, or, unpinned, on a tribunal of that name (or an alias
    of one: the answer names the alias)."""
    name = calls.inference.federation.resolve(body.model)
    if calls.site is None and (tribunal := tribunal_named(calls.inference.config, name)):
        return await TribunalRun(calls, tribunal, body).respond()
    return await calls.inference.forward(calls.request, CHAT, body, calls.caller, calls.site)


class TribunalRun:
    """One chat completion on a tribunal."""

    def __init__(self, calls: Calls, tribunal: TribunalConfig, body: ChatCompletionRequest):
        self.calls = calls
        self.tribunal = tribunal
        self.body = body
        self.steps: list[TribunalStep] = []
        self.answers: list[Answer] = []
        request_id = calls.request.scope.get("state", {}).get("request_id")
        self.id = f"chatcmpl-tribunal-{request_id or secrets.token_hex(8)}"
        self.created = int(time.time())

    async def respond(self) -> Response | ChatCompletionResponse:
        """Check the request and every model, then run it (streamed if asked)."""
        if self.body.tools:
            raise InvalidRequestError("A tribunal does not take tools.", param="tools")
        if (self.body.n or 1) > 1:
            raise InvalidRequestError("A tribunal answers with one choice; n is 1.", param="n")
        federation = self.calls.inference.federation
        for model in self.tribunal.members:
            federation.policy.require_model(self.calls.caller, model)
        for model in self.tribunal.members:
            try:
                federation.require_servable(self.calls.caller, model)
            except NoSiteAvailableError as exc:
                raise NoSiteAvailableError(
                    f"The tribunal {self.tribunal.name!r} cannot run: {exc.message}",
                    retry_after_s=exc.retry_after_s,
                ) from None
        if self.body.stream:
            return StreamingResponse(self._stream(), media_type=EVENT_STREAM)
        draft = await self._draft()
        final = await self._step("revise", self.tribunal.rounds, self.tribunal.reviser, draft)
        (choice,) = final.body["choices"]
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.body.model,  # the tribunal's name, or the alias the caller named
            choices=[ChatChoice.model_validate(choice)],
            usage=summed_usage(self.answers),
            first_trace=self.steps if self.body.first_trace else None,
        )

    # -- the steps ----------------------------------------------------------

    async def _draft(self) -> list[ChatMessage]:
        """Generate, then every round but the last revision: the last reviser's messages."""
        tribunal = self.tribunal
        answer = await self._step("generate", 0, tribunal.generator, self.body.messages)
        text = _content(answer)
        for round_ in range(1, tribunal.rounds + 1):
            panel = [(critic, self._critic_messages(text)) for critic in tribunal.critics]
            answers = await asyncio.gather(
                *(self._call("critique", critic, messages) for critic, messages in panel)
            )
            # In the panel's order, whichever answered first; the first failure fails it.
            critiques = [
                self._checked("critique", round_, critic, answer)
                for (critic, _), answer in zip(panel, answers, strict=True)
            ]
            messages = self._reviser_messages(text, [_content(c) for c in critiques])
            if round_ == tribunal.rounds:
                return messages
            text = _content(await self._step("revise", round_, tribunal.reviser, messages))
        raise AssertionError("rounds is at least 1")  # pragma: no cover

    async def _step(
        self, kind: str, round_: int, model: str, messages: list[ChatMessage]
    ) -> Answer:
        """One non-streamed step, in the trace; a failed one fails the tribunal."""
        return self._checked(kind, round_, model, await self._call(kind, model, messages))

    async def _call(self, kind: str, model: str, messages: list[ChatMessage]) -> Answer:
        return await self.calls.call(CHAT, self._request(kind, model, messages))

    def _checked(self, kind: str, round_: int, model: str, answer: Answer) -> Answer:
        """`answer` in the trace if it succeeded; the tribunal's failure, naming it, if not."""
        if not answer.ok:
            raise CallFailedError(f"tribunal's {kind} step ({model})", answer)
        self._record(kind, round_, model, answer.site, _content(answer), answer)
        return answer

    def _request(
        self, kind: str, model: str, messages: list[ChatMessage], stream: bool = False
    ) -> ChatCompletionRequest:
        update: dict = {
            "model": model,
            "messages": messages,
            "stream": stream or None,
            "stream_options": StreamOptions(include_usage=True) if stream else None,
            "n": None,
        }
        if kind == "critique":
            update |= NOT_FOR_CRITICS
            update |= {"max_tokens": self.tribunal.critic_max_tokens, "max_completion_tokens": None}
        return self.body.model_copy(update=update)

    def _record(  # noqa: PLR0913 (one trace entry, spelled out)
        self, kind: str, round_: int, model: str, site: str | None, text: str, answer: Answer
    ) -> None:
        self.answers.append(answer)
        usage = Usage.model_validate(answer.usage) if answer.usage else None
        self.steps.append(
            TribunalStep(
                step=kind,  # type: ignore[arg-type]
                round=round_,
                model=model,
                site=site,
                content=text,
                usage=usage,
                started_at=round(answer.started_at, 6),
                duration_s=round(answer.duration_s, 6),
            )
        )

    def _critic_messages(self, answer: str) -> list[ChatMessage]:
        prompt = self.tribunal.prompts.critic.format(
            conversation=_as_text(self.body.messages), answer=answer
        )
        return [ChatMessage(role="user", content=prompt)]

    def _reviser_messages(self, answer: str, critiques: list[str]) -> list[ChatMessage]:
        numbered = "\n\n".join(f"{i}. {text}" for i, text in enumerate(critiques, 1))
        prompt = self.tribunal.prompts.revise.format(
            critiques=numbered, answer=answer, conversation=_as_text(self.body.messages)
        )
        return [
            *self.body.messages,
            ChatMessage(role="assistant", content=answer),
            ChatMessage(role="user", content=prompt),
        ]

    # -- streaming ----------------------------------------------------------

    async def _stream(self) -> AsyncIterator[bytes]:
        """Keep-alive comments while the early steps run, then the last revision's stream
        as the tribunal's: its id and model, usage summed over every step."""
        keepalive_s = self.calls.inference.config.gateway.stream_keepalive_s
        early = asyncio.ensure_future(self._draft())
        try:
            yield KEEPALIVE_COMMENT  # the status line and headers go out now
            while not early.done():
                await asyncio.wait({early}, timeout=keepalive_s)
                if not early.done():
                    yield KEEPALIVE_COMMENT
            try:
                messages = early.result()
            except GatewayError as exc:
                yield exc.sse_event()
                return
            async for event in self._final_stream(messages):
                yield event
        finally:
            early.cancel()

    async def _final_stream(self, messages: list[ChatMessage]) -> AsyncIterator[bytes]:
        reviser, round_ = self.tribunal.reviser, self.tribunal.rounds
        body = self._request("revise", reviser, messages, stream=True)
        started_at, started = time.time(), time.monotonic()
        calls = self.calls
        try:
            response = await calls.inference.forward(
                calls.request, CHAT, body, calls.caller, calls.site
            )
        except GatewayError as exc:
            yield exc.sse_event()
            return
        if not isinstance(response, StreamingResponse):  # the site's error, one JSON body
            yield b"data: " + bytes(response.body) + b"\n\n"
            return
        options = self.body.stream_options
        relay = _Relay(self.id, self.body.model, bool(options and options.include_usage))
        source = response.body_iterator
        try:
            async for event in sse_events(source):
                for out in relay.take(event):
                    yield out
        finally:
            # The client left mid-way: release the site's stream (and its meter) now.
            await source.aclose()  # type: ignore[attr-defined]
        site = response.headers.get(SITE_HEADER)
        answer = Answer(200, {"usage": relay.usage}, site, started_at, time.monotonic() - started)
        self._record("revise", round_, reviser, site, "".join(relay.text), answer)
        trace = [step.model_dump() for step in self.steps] if self.body.first_trace else None
        yield relay.last(summed_usage(self.answers), trace)


class _Relay:
    """The reviser's stream as the tribunal's: its id and model on every chunk, the
    text and usage kept for the trace, the usage chunk only if the caller asked for it
    (with every step's usage), and the last chunk held back to carry the trace."""

    def __init__(self, chunk_id: str, model: str, with_usage: bool):
        self.chunk_id, self.model, self.with_usage = chunk_id, model, with_usage
        self.text: list[str] = []
        self.usage: dict = {}
        self.pending: dict | None = None

    def take(self, event: bytes) -> list[bytes]:
        chunk = event_data(event)
        if chunk is None or "error" in chunk:  # a comment, [DONE], an error event
            return [] if event.strip() == DONE else [event + b"\n\n"]
        for choice in chunk.get("choices") or []:
            self.text.append((choice.get("delta") or {}).get("content") or "")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
            if not self.with_usage:
                return []
        out = [] if self.pending is None else [data_event(self.pending)]
        self.pending = {**chunk, "id": self.chunk_id, "model": self.model}
        return out

    def last(self, usage: Usage, trace: list[dict] | None) -> bytes:
        if self.pending is None:
            return sse_error_event("The reviser's stream ended without an answer.", 502)
        if self.pending.get("usage"):
            self.pending["usage"] = usage.model_dump(exclude_none=True)
        if trace is not None:
            self.pending["first_trace"] = trace
        return data_event(self.pending) + DONE + b"\n\n"


def _content(answer: Answer) -> str:
    (choice,) = answer.body["choices"]
    return (choice.get("message") or {}).get("content") or ""


def _as_text(messages: list[ChatMessage]) -> str:
    """The conversation as `role: text` lines, the text parts of each message only."""
    return "\n".join(f"{message.role}: {message.text()}" for message in messages)
