"""One inference request end to end: access, placement, forwarding, metering.

Routes call `InferenceService.forward` and nothing else: it checks the
caller may use the model and is within their limits (serve_app/access/),
asks the federation where to send it, a cold start included
(serve_app/routing/federation.py), forwards it with retries before the
first byte (serve_app/routing/forwarding.py), and meters the answer
(serve_app/usage/): metrics, the token limits and the usage ledger hear of
every outcome, a refusal or a client that left included, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from pydantic_core import PydanticSerializationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from deployments.openai_errors import field_path, lone_surrogate_at, sse_error_event
from serve_app.access.cache_salt import CacheSalter
from serve_app.access.policy import Principal
from serve_app.access.ratelimit import Admission, RateLimiter
from serve_app.config import FederationConfig, LimitsConfig
from serve_app.errors import GatewayError, InvalidRequestError
from serve_app.middleware import until_disconnected
from serve_app.protocol import OpenAIModel, SamplingFields, StreamOptions
from serve_app.routing.federation import Federation
from serve_app.routing.forwarding import Forwarder
from serve_app.routing.prefix_affinity import prefix_blocks
from serve_app.store import UsageRecord
from serve_app.usage.ledger import UsageLedger
from serve_app.usage.metering import Meter

EVENT_STREAM = "text/event-stream"
# An SSE comment: every client skips it; proxies see the connection is alive.
KEEPALIVE_COMMENT = b": keep-alive\n\n"
logger = logging.getLogger(__name__)
# A token is about four characters of English (OpenAI's rule of thumb): the prompt's
# share of a reservation, made before any tokenizer has seen it, and settled after.
CHARS_PER_TOKEN = 4


class InferenceService:
    def __init__(
        self,
        config: FederationConfig,
        federation: Federation,
        limiter: RateLimiter,
        ledger: UsageLedger | None,
        salter: CacheSalter,
    ):
        self.config = config
        self.salter = salter
        self.federation = federation
        self.metrics = federation.metrics
        self.limiter = limiter
        self.ledger = ledger
        self.forwarder = Forwarder(
            federation.sites,
            federation.transports,
            config.placement.retry_after_s,
            federation.metrics,
        )
        self._background: set[asyncio.Task] = set()

    async def stop(self) -> None:
        """Wait for the token counts still being recorded."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def forward(  # noqa: PLR0913 (the request, its caller and route, spelled out)
        self,
        request: Request,
        path: str,
        body: OpenAIModel,
        caller: Principal,
        site: str | None = None,
        route: str | None = None,
    ) -> Response:
        """Check the caller may, pick sites, forward; every outcome is metered once.

        `path` is the site's route; `route` the caller's, where another API is translated
        onto it (a response on chat completions): metrics and the ledger name that one,
        and the model must support its API (400 `unsupported_api` before any site is
        called, naming the APIs it does). An alias in `body.model` stands for its model
        throughout (access, limits, placement, the site's request, the ledger); only the
        answer names the alias.
        """
        body, alias = self._resolved(body)
        model = body.model
        request_id = request.scope.get("state", {}).get("request_id", "")
        salt = self.salter.salt(caller)
        payload, meter = self._prepare(body, salt)
        meter.on_done = self._accountant(caller, route or path, request_id, body)
        work: asyncio.Future[Response | None] | None = None
        try:
            self.federation.policy.require_model(caller, model)
            self.federation.require_api(model, route or path, site)
            prefix_aware = self.config.placement.policy == "prefix-aware"
            limits = self.config.limits
            # The prompt as text, once: the token reservation and prefix placement both read it.
            prompt = _prompt_of(body) if limits is not None or prefix_aware else ""
            tokens = tokens_to_reserve(body, prompt, limits)
            admission = await self.limiter.admit(caller.user, model, tokens)
            meter.reserved_tokens, meter.holds_place = (
                admission.reserved_tokens,
                admission.holds_place,
            )

            async def place_and_forward() -> Response:
                # A caller held through a cold start may leave; the hold ends with it.
                prefix = self._prefix(prompt, salt) if prefix_aware else None
                stream = bool(getattr(body, "stream", None))
                order = await self.federation.place_or_cold_start(
                    caller, model, site, prefix, stream
                )
                self.metrics.placed(model, order)
                response = await self.forwarder.forward(
                    path, payload, request_id, order, meter, answer_as=alias
                )
                if prefix and meter.site is not None:
                    self.federation.placer.remember(prefix, meter.site)
                return response

            answer = until_disconnected(request, place_and_forward())
            keepalive_s = self.config.gateway.stream_keepalive_s
            if keepalive_s and getattr(body, "stream", None):
                work = asyncio.ensure_future(answer)
                await asyncio.wait({work}, timeout=keepalive_s)
                if not work.done():
                    return StreamingResponse(
                        self._kept_alive(work, keepalive_s, meter), media_type=EVENT_STREAM
                    )
                response = await work
            else:
                response = await answer
        except GatewayError as exc:
            meter.finish(exc.status)
            raise
        except asyncio.CancelledError:
            if work is not None:
                work.cancel()
            meter.finish(499)
            raise
        except Exception:
            meter.finish(500)
            raise
        if response is None:
            # 499: nginx's "client closed request"; nobody is left to read it.
            meter.finish(499)
            return Response(status_code=499)
        return response

    async def _kept_alive(
        self, work: asyncio.Future[Response | None], interval_s: float, meter: Meter
    ) -> AsyncIterator[bytes]:
        """A stream that no site has started to answer yet: comments until one does.

        A request held through a cold start or a long queue would send nothing
        for minutes, and proxies and clients with idle timeouts cut it; an SSE
        comment line every `interval_s` keeps it open, and clients skip it.
        The status is 200 from the first comment on, so a refusal that comes
        later (a 504, a site's 400) is the stream's one event instead.
        """
        response: Response | None = None
        try:
            while not work.done():
                yield KEEPALIVE_COMMENT
                await asyncio.wait({work}, timeout=interval_s)
            try:
                response = work.result()
            except GatewayError as exc:
                meter.finish(exc.status)
                yield exc.sse_event()
                return
            except Exception:
                logger.exception("a kept-alive stream failed")
                meter.finish(500)
                yield sse_error_event("The gateway failed to process the request.", 500)
                return
            if isinstance(response, StreamingResponse):
                body, response = response.body_iterator, None
                async for chunk in body:
                    yield chunk
            elif response is not None:
                # The site answered with one JSON body (its error): it becomes the event.
                yield b"data: " + bytes(response.body) + b"\n\n"
        finally:
            if not work.done():
                work.cancel()
            elif isinstance(response, StreamingResponse):
                # The client left just as the site began: release the site's stream.
                task = asyncio.ensure_future(_discard(response))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            meter.finish(499)  # unless the answer, or a refusal, finished it already

    def _resolved(self, body: OpenAIModel) -> tuple[OpenAIModel, str | None]:
        """`body` on the model its `model` stands for, and the alias it named, if any."""
        model = self.federation.resolve(body.model)
        if model == body.model:
            return body, None
        return body.model_copy(update={"model": model}), body.model

    def _prefix(self, prompt: str, salt: str | None) -> list[bytes]:
        """The prompt's block hashes under the caller's salt, for prefix-aware placement."""
        settings = self.config.placement.prefix
        seed = salt.encode() if salt else b""
        return prefix_blocks(prompt, settings.block_chars, settings.max_blocks, seed)

    def _prepare(self, body: OpenAIModel, salt: str | None) -> tuple[bytes, Meter]:
        """The site's request body: the caller's cache salt in place of any the client
        sent; streams always ask the site for usage, to meter them."""
        keep = self.config.ledger.store_content
        changes: dict = {}
        if salt is not None and isinstance(body, SamplingFields):
            changes["cache_salt"] = salt
        usage_requested = True
        if getattr(body, "stream", None):
            options = body.stream_options or StreamOptions()
            usage_requested = bool(options.include_usage)
            if not usage_requested:
                changes["stream_options"] = options.model_copy(update={"include_usage": True})
        if changes:
            body = body.model_copy(update=changes)
        # Explicit nulls mean "default" in OpenAI's API; some servers choke on them.
        try:
            payload = body.model_dump_json(exclude_none=True).encode()
        except PydanticSerializationError:
            raise not_unicode(body) from None
        return payload, Meter(body.model, usage_requested=usage_requested, keep_content=keep)

    def _accountant(self, caller: Principal, path: str, request_id: str, body: OpenAIModel):
        started_at, started = time.time(), time.monotonic()

        def account(meter: Meter) -> None:
            self.metrics.request_done(meter, path, started)
            if meter.total_tokens or meter.reserved_tokens or meter.holds_place:
                admission = Admission(meter.reserved_tokens, meter.holds_place)
                task = asyncio.ensure_future(
                    self.limiter.settle(caller.user, meter.model, admission, meter.total_tokens)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            if self.ledger is None:
                return
            self.ledger.record(
                UsageRecord(
                    time=started_at,
                    request_id=request_id,
                    user=caller.user,
                    credential=caller.credential,
                    route=path,
                    model=meter.model[:256],
                    site=meter.site,
                    status=meter.status,
                    prompt_tokens=meter.prompt_tokens,
                    completion_tokens=meter.completion_tokens,
                    latency_s=round(time.monotonic() - started, 6),
                    prompt=_prompt_of(body) if meter.keep_content else None,
                    completion=meter.completion,
                )
            )

        return account


def tokens_to_reserve(body: OpenAIModel, prompt: str, limits: LimitsConfig | None) -> int:
    """The most a request may use: its prompt (`_prompt_of`), estimated, and every
    completion's limit."""
    if limits is None:
        return 0
    prompt_tokens = len(prompt) // CHARS_PER_TOKEN + 1
    if not isinstance(body, SamplingFields):  # an embedding: a prompt only
        return prompt_tokens
    completion = (
        getattr(body, "max_completion_tokens", None) or body.max_tokens or limits.default_max_tokens
    )
    return prompt_tokens + completion * (body.n or 1)


async def _discard(response: StreamingResponse) -> None:
    """Start a stream nobody will read and close it, so that the site's side of it is
    released (its connection, the in-flight count) as when a client leaves mid-way."""
    body = response.body_iterator
    with contextlib.suppress(Exception):
        await anext(body)
    await body.aclose()


def not_unicode(body: OpenAIModel) -> InvalidRequestError:
    """The 400 for a body that decoded from JSON but holds a string UTF-8 cannot carry."""
    where = field_path(lone_surrogate_at(body.model_dump(exclude_none=True)) or ())
    return InvalidRequestError(
        f"Invalid request: {where or 'the body'}: a lone UTF-16 surrogate (such as "
        "\\ud800) is not a character; send valid Unicode.",
        param=where,
    )


def _prompt_of(body: OpenAIModel) -> str:
    for name in ("messages", "prompt", "input"):
        if (value := getattr(body, name, None)) is not None:
            return json.dumps(value, default=lambda v: v.model_dump(exclude_none=True))
    return ""
