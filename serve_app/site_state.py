"""What the gateway knows about each site, and the loop that keeps it current.

Per site: the last status report and when it came, status calls that failed
in a row, the circuit breaker, and per model this replica's requests in
flight there and the recent time to first byte (each model has its own
replicas, so one model's queue says nothing about another's). A poller per site calls the site status
function through the site's control channel every `poll_interval_s`, with a
timeout, in the background: no request ever waits for a status call.

Health is derived, never stored: `unknown` before the first answer, `up` with
a fresh report, `stale` when the report is older than a few poll intervals
(the channel is slow, or hung), `down` after `down_after_failures` failed
calls in a row, until the site answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Literal

from pydantic import ValidationError

from deployments.site_functions import site_status
from deployments.site_status import ModelStatus, SiteStatus
from serve_app.circuit_breaker import CircuitBreaker
from serve_app.config import FederatedSiteConfig, FederationConfig
from serve_app.control_channel import ControlChannel
from serve_app.placement import Candidate

logger = logging.getLogger(__name__)
SiteHealth = Literal["unknown", "up", "stale", "down"]
# Weight of the newest sample in the moving average of time to first byte.
LATENCY_SMOOTHING = 0.2


class SiteState:
    def __init__(self, config: FederatedSiteConfig, federation: FederationConfig):
        self.config = config
        self.name = config.name
        self.models = {model.id for model in config.site_config.models}
        self.stale_after_s = config.channel.poll_interval_s * federation.status.stale_after_polls
        self.down_after_failures = federation.status.down_after_failures
        self.breaker = CircuitBreaker(
            federation.circuit_breaker.failure_threshold, federation.circuit_breaker.open_s
        )
        self.status: SiteStatus | None = None
        self.reported_at: float | None = None
        self.in_flight_at_report: Counter[str] = Counter()
        self.failures = 0
        self.error: str | None = None
        self.in_flight: Counter[str] = Counter()
        self.latency_s: dict[str, float] = {}

    def health(self, now: float) -> SiteHealth:
        if self.failures >= self.down_after_failures:
            return "down"
        if self.reported_at is None:
            return "unknown"
        return "stale" if now - self.reported_at > self.stale_after_s else "up"

    def record_status(self, status: SiteStatus, now: float) -> None:
        if not status.reachable:
            self.record_status_failure(status.error or "unreachable")
            return
        if self.failures >= self.down_after_failures:
            logger.warning("site %s is up again", self.name)
        self.status = status
        self.reported_at = now
        self.in_flight_at_report = self.in_flight.copy()
        self.failures = 0
        self.error = None

    def record_status_failure(self, error: str) -> None:
        self.failures += 1
        self.error = error
        if self.failures == self.down_after_failures:
            logger.warning("site %s is down: %s", self.name, error)

    def record_latency(self, model: str, seconds: float) -> None:
        previous = self.latency_s.get(model)
        self.latency_s[model] = (
            seconds if previous is None else previous + LATENCY_SMOOTHING * (seconds - previous)
        )

    def model_status(self, model: str) -> ModelStatus | None:
        if self.status is None:
            return None
        return next((m for m in self.status.models if m.id == model), None)

    def candidate(self, model: str, now: float) -> Candidate | None:
        """This site as a placement candidate for `model`, or None if it cannot take it now."""
        health = self.health(now)
        if model not in self.models or health == "down" or not self.breaker.available(now):
            return None
        status = self.model_status(model)
        if status is not None and status.state in ("unhealthy", "not_deployed"):
            return None
        return Candidate(
            site=self.name,
            priority=self.config.priority,
            ready_replicas=status.replicas_running if status else 0,
            reported_requests=(status.ongoing_requests + status.queued_requests) if status else 0,
            in_flight_at_report=self.in_flight_at_report[model],
            in_flight=self.in_flight[model],
            latency_s=self.latency_s.get(model),
            fresh=health == "up",
        )


class StatusPoller:
    """Polls one site's status through its channel until stopped."""

    def __init__(self, state: SiteState, channel: ControlChannel):
        self.state = state
        self.channel = channel
        self._site = state.config.site_config.model_dump()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.channel.close()

    async def poll_once(self) -> None:
        timeout_s = self.state.config.timeouts.status_s
        future = self.channel.submit(site_status, self._site, timeout_s)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s + 1.0)
            status = SiteStatus.model_validate(result)
        except TimeoutError:
            future.cancel()
            self.state.record_status_failure(f"status call timed out after {timeout_s:.0f} s")
        except ValidationError as exc:
            self.state.record_status_failure(f"status report is malformed: {exc}")
        except Exception as exc:  # the channel's own failure: auth, network, endpoint offline
            self.state.record_status_failure(f"{type(exc).__name__}: {exc}")
        else:
            self.state.record_status(status, time.monotonic())

    async def _run(self) -> None:
        interval_s = self.state.config.channel.poll_interval_s
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
