"""Forwarding one OpenAI request to a site, with retries before the first byte.

Each site's transport (serve_app/routing/transports.py) opens the way: a pooled
`aiohttp.ClientSession` (under concurrency it measured several times faster
than `httpx` here, whose connection pool checks every pooled connection on
each request, bench/README.md), straight or through the site's SSH tunnel, or
one Globus Compute task per request; all else here is the same for every
site. A request goes to the sites in the
order placement chose; a site that fails before it has the request
(refused, reset, or 502/503/504) is skipped for the next, and its circuit
breaker hears of it, unless its 503 carries a Retry-After: the site is full
(its queue bound), not broken, and the caller's 503 says when to come back.
A site that has the request but has not answered within `first_byte_s` is
neither: it may still be generating (a long non-streaming answer sends its
headers only at the end), so the request is not sent a second time
elsewhere, the caller gets a 504, and a slow site is not counted as a
failed one. Once a site has started answering,
the answer is the site's: streams pass through chunk by chunk as they
arrive, a silence longer than `read_s` between two chunks ends them, and a
stream that the site cuts ends with one OpenAI error event, never a hang.
Non-streaming answers are small and read whole, so a non-OpenAI error body
can be replaced by a proper envelope, and a site's own 500 becomes a 502
that names the site (the gateway itself did not fail). A request that named
an alias gets answers that name it: the JSON's `model`, and every streamed
event's (only then are the events parsed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
from starlette.responses import Response, StreamingResponse

from serve_app.errors import (
    NoSiteAvailableError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from serve_app.metrics import GatewayMetrics
from serve_app.routing.site_state import SiteState
from serve_app.routing.transports import RelayError, SiteResponse, Transport
from serve_app.sse import data_event, event_data, sse_events
from serve_app.usage.metering import Meter

logger = logging.getLogger(__name__)
RETRYABLE_STATUSES = frozenset({502, 503, 504})
# Site responses that carry the site's own headers worth passing on.
PASSED_HEADERS = ("content-type", "retry-after", "server-timing")
# The last event of an OpenAI stream.
STREAM_END = b"data: [DONE]"
# Which site answered: for users chasing a slow answer, and for the routing tests.
SITE_HEADER = "x-first-site"


# What a site connection can fail with before or while it answers.
SITE_ERRORS = (aiohttp.ClientError, TimeoutError)


class _Attempt:
    """What went wrong with the sites tried so far, for the final error."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.failures: list[str] = []
        self.timed_out = False
        self.retry_after_s: int | None = None  # the soonest a full site said to come back
        self.too_large: PayloadTooLargeError | None = None  # for a Globus Compute site's tasks


class Forwarder:
    def __init__(
        self,
        sites: dict[str, SiteState],
        transports: dict[str, Transport],
        retry_after_s: int,
        metrics: GatewayMetrics,
    ):
        self.sites = sites
        self.transports = transports
        self.retry_after_s = retry_after_s
        self.metrics = metrics

    async def forward(  # noqa: PLR0913 (the request and where it goes, spelled out)
        self,
        path: str,
        body: bytes,
        request_id: str,
        order: list[str],
        meter: Meter,
        answer_as: str | None = None,
    ) -> Response:
        """Send to the first site in `order` that starts answering; return its answer.

        `meter` hears which site answered, with what status and usage, once
        the answer has been passed on (for a stream: when it ends). With
        `answer_as` (the alias the caller named) the answer names it as its model.
        """
        model = meter.model
        attempt = _Attempt(model)
        for name in order:
            state = self.sites[name]
            now = time.monotonic()
            if not state.breaker.acquire(now):
                attempt.failures.append(f"{name}: circuit open")
                self.metrics.retry(name, "circuit_open")
                continue
            response = await self._send(state, path, body, request_id, attempt)
            if response is not None:
                meter.site = name
                if name != order[0]:
                    self.metrics.failover(model, name)
                return await self._relay(state, response, meter, answer_as)
        summary = "; ".join(attempt.failures) or "no site tried"
        if attempt.timed_out:
            raise UpstreamTimeoutError(f"No site answered in time ({summary}).")
        if attempt.too_large is not None:
            raise attempt.too_large
        raise NoSiteAvailableError(
            f"No site could take the request ({summary}). Retry later.",
            retry_after_s=attempt.retry_after_s or self.retry_after_s,
        )

    async def _send(
        self, state: SiteState, path: str, body: bytes, request_id: str, attempt: _Attempt
    ) -> SiteResponse | None:
        transport = self.transports[state.name]
        started = time.monotonic()
        model = attempt.model
        state.request_started(model)
        try:
            response = await asyncio.wait_for(
                transport.post(state.endpoint(model) + path, body, {"x-request-id": request_id}),
                state.config.timeouts.first_byte_s,
            )
        except aiohttp.ClientError as exc:
            state.request_ended(model)
            state.breaker.record_failure(time.monotonic())
            timed_out = isinstance(exc, TimeoutError)  # connecting took longer than connect_s
            self.metrics.retry(state.name, "timeout" if timed_out else "connection")
            attempt.timed_out |= timed_out
            attempt.failures.append(f"{state.name}: {_describe(exc)}")
            logger.warning("site %s failed before answering: %r", state.name, exc)
            return None
        except PayloadTooLargeError as exc:
            # Too large for this site's transport (a Globus Compute task), not for another's.
            state.request_ended(model)
            state.breaker.abandon()
            attempt.too_large = exc
            attempt.failures.append(f"{state.name}: too large for its Globus Compute tasks")
            return None
        except TimeoutError:
            # The site has the request and may still be working on it: not a failure
            # of the site, and not a reason to have another site generate it again.
            state.request_ended(model)
            state.breaker.abandon()
            limit = state.config.timeouts.first_byte_s
            logger.warning("site %s did not answer within %.0f s", state.name, limit)
            raise UpstreamTimeoutError(
                f"Site {state.name} did not start its answer within {limit:g} s."
            ) from None
        except BaseException:
            # The client went away while we waited: no verdict on the site.
            state.request_ended(model)
            state.breaker.abandon()
            raise
        if response.status in RETRYABLE_STATUSES:
            retry_after = response.headers.get("retry-after", "")
            response.release()
            state.request_ended(model)
            if response.status == 503 and retry_after.isdigit():
                # The site is full (its queue bound, Serve's max_queued_requests), not broken.
                state.breaker.abandon()
                attempt.failures.append(f"{state.name}: full")
                seconds = int(retry_after)
                attempt.retry_after_s = min(attempt.retry_after_s or seconds, seconds)
                self.metrics.retry(state.name, "full")
                return None
            state.breaker.record_failure(time.monotonic())
            attempt.failures.append(f"{state.name}: HTTP {response.status}")
            self.metrics.retry(state.name, f"http_{response.status}")
            return None
        state.breaker.record_success()
        now = time.monotonic()
        state.record_latency(model, now - started, now)
        return response

    async def _relay(
        self,
        state: SiteState,
        response: SiteResponse,
        meter: Meter,
        answer_as: str | None,
    ) -> Response:
        model = meter.model
        headers = {k: v for k in PASSED_HEADERS if (v := response.headers.get(k))}
        headers[SITE_HEADER] = state.name
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            chunks = self._stream(state, response, meter)
            return StreamingResponse(
                meter.metered(_renamed(chunks, answer_as) if answer_as else chunks),
                status_code=response.status,
                headers=headers,
            )
        try:
            remaining = state.config.timeouts.total_s
            content = await asyncio.wait_for(response.read(), remaining)
        except SITE_ERRORS as exc:
            logger.warning("site %s broke off its answer: %r", state.name, exc)
            raise UpstreamError(
                f"Site {state.name} broke off its answer ({_describe(exc)})."
            ) from None
        finally:
            state.request_ended(model)
            response.release()
        if response.status >= 400:
            message = _openai_error_message(content)
            if message is None:
                raise UpstreamError(
                    f"Site {state.name} answered HTTP {response.status} without an OpenAI error."
                )
            if response.status >= 500:
                # The site failed, not the gateway: say so with 502, never pass a 500 on.
                raise UpstreamError(f"Site {state.name} failed to process the request: {message}")
        if response.status == 200:
            meter.read_body(content)
            if answer_as:
                content = _renamed_body(content, answer_as)
        meter.finish(response.status)
        return Response(content, status_code=response.status, headers=headers)

    async def _stream(
        self, state: SiteState, response: aiohttp.ClientResponse, meter: Meter
    ) -> AsyncIterator[bytes]:
        timeouts = state.config.timeouts
        deadline = time.monotonic() + timeouts.total_s
        model = meter.model
        finished = False
        status = 499  # unless the client gets it all, or the site breaks it off
        content = response.content
        try:
            while True:
                # Only the wait for the site: not the time the client takes to read.
                async with asyncio.timeout(timeouts.read_s):
                    chunk = await content.readany()
                if not chunk:
                    break
                if meter.first_byte_at is None:
                    meter.first_byte_at = time.monotonic()
                yield chunk
                if STREAM_END in chunk:
                    # The client has the whole answer (the next chunk was asked for, so
                    # this one was sent); one that hangs up now, as the OpenAI SDK does,
                    # has not left early.
                    status = response.status
                if time.monotonic() > deadline:
                    raise TimeoutError("the stream ran past its total time limit")
            finished = True
            status = response.status
        except SITE_ERRORS as exc:
            status = 502
            state.breaker.record_failure(time.monotonic())
            logger.warning("site %s broke off a stream: %r", state.name, exc)
            message = f"Site {state.name} broke off the stream ({_describe(exc)})."
            yield UpstreamError(message).sse_event()
        finally:
            state.request_ended(model)
            meter.finish(status)
            if finished:
                response.release()  # the connection goes back to the pool
            else:
                # The client went away (this generator was cancelled) or the site
                # failed: drop the connection, and Serve cancels the request.
                response.close()


async def _renamed(chunks: AsyncGenerator[bytes, None], model: str) -> AsyncIterator[bytes]:
    """A stream whose events name `model` (an alias) where the site's named its own."""
    events = sse_events(chunks)
    async with contextlib.aclosing(chunks), contextlib.aclosing(events):
        async for event in events:
            chunk = event_data(event)
            if chunk is not None and "model" in chunk:
                yield data_event({**chunk, "model": model})
            else:  # a comment, an error event, [DONE]
                yield event + b"\n\n"


def _renamed_body(content: bytes, model: str) -> bytes:
    """A JSON answer naming `model` (an alias) where the site's named its own."""
    try:
        answer = json.loads(content)
    except ValueError:
        return content
    if not isinstance(answer, dict) or "model" not in answer:
        return content
    return json.dumps({**answer, "model": model}, separators=(",", ":")).encode()


def _openai_error_message(content: bytes) -> str | None:
    """The message of an OpenAI error body, or None if `content` is not one."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return None


def _describe(exc: BaseException) -> str:
    """What went wrong, in words a caller can use: the library's names stay in the log."""
    if isinstance(exc, RelayError):
        return str(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connecting timed out"
    if isinstance(exc, TimeoutError):
        return "it went silent"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "could not connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    return "the connection failed"
