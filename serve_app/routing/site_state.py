"""What the gateway knows about each site, and the loop that keeps it current.

Per site: the last status report and when it came, status calls that failed
in a row, the circuit breaker, and per model this replica's requests in
flight there and the recent time to first byte (each model has its own
replicas, so one model's queue says nothing about another's). A poller per site calls the site status
function through the site's control channel every `poll_interval_s`, with a
timeout, in the background: no request ever waits for a status call. It also
asks the site's transport whether requests can reach the site (a tunnel that
is up, an endpoint the gateway can connect to): a site that answers its
channel but not the gateway's requests is down all the same, with that reason.

Health is derived, never stored: `unknown` before the first answer, `up` with
a fresh report, `stale` when the report is older than a few poll intervals
(the channel is slow, or hung), `down` after `down_after_failures` failed
calls in a row, until the site answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import statistics
import time
from collections import Counter, deque
from typing import Literal

from pydantic import ValidationError

from deployments.site_client import SiteCallTimeout, SiteClient
from deployments.site_status import JobStatus, ModelStatus, SiteStatus
from serve_app.config import FederatedSiteConfig, FederationConfig
from serve_app.metrics import GatewayMetrics
from serve_app.routing.circuit_breaker import CircuitBreaker
from serve_app.routing.placement import Candidate
from serve_app.routing.transports import Transport

logger = logging.getLogger(__name__)
SiteHealth = Literal["unknown", "up", "stale", "down"]
# The moving average of time to first byte: the newest sample's weight when requests
# come back to back; the older samples' weight halves with every LATENCY_HALF_LIFE_S
# without one, so what a burst a minute ago measured does not outweigh the next answer.
LATENCY_SMOOTHING = 0.2
LATENCY_HALF_LIFE_S = 5.0
# A latency older than this is not known any more: the site takes turns again, so one
# slow answer cannot keep it idle (one request at a time always finds equal loads).
LATENCY_FORGOTTEN_AFTER_S = 30.0
# Cold starts remembered per model, for the Retry-After of the next one.
START_TIMES_KEPT = 20


class SiteState:
    def __init__(
        self, config: FederatedSiteConfig, federation: FederationConfig, metrics: GatewayMetrics
    ):
        self.config = config
        self.metrics = metrics
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
        # Most requests this ingress had open at the site since the status call went out.
        self._peak_in_flight: Counter[str] = Counter()
        self.latency_s: dict[str, float] = {}
        self._latency_at: dict[str, float] = {}  # monotonic time of the latest sample
        self.slurm = config.site_config.slurm
        # Seconds from submission to ready of the Slurm jobs seen starting, per model.
        self.start_times: dict[str, deque[float]] = {}
        self._timed_jobs: set[str] = set()
        self._turn = itertools.count()
        self._reported = asyncio.Event()

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
        self.in_flight_at_report = self._peak_in_flight.copy()
        self.failures = 0
        self.error = None
        self._learn_start_times(status)
        self._announce_report()

    def report_metrics(self) -> None:
        now = time.monotonic()
        self.metrics.site_report(
            self.name,
            self.health(now) in ("up", "stale"),
            self.breaker.state(now),
            self.status,
            self.slurm is not None,
        )

    def _announce_report(self) -> None:
        self._reported.set()
        self._reported = asyncio.Event()

    async def next_report(self, timeout_s: float) -> None:
        """Wait for the next status report (or failed status call), at most `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reported.wait(), timeout_s)

    def _learn_start_times(self, status: SiteStatus) -> None:
        for model in status.models:
            for job in model.jobs:
                if job.start_s is not None and job.job_id not in self._timed_jobs:
                    self._timed_jobs.add(job.job_id)
                    times = self.start_times.setdefault(model.id, deque(maxlen=START_TIMES_KEPT))
                    times.append(job.start_s)

    def typical_start_s(self, model: str) -> float | None:
        """Median submission-to-ready time of the model's jobs seen here; None before any."""
        times = self.start_times.get(model)
        return statistics.median(times) if times else None

    def record_status_failure(self, error: str) -> None:
        self.failures += 1
        self.error = error
        if self.failures == self.down_after_failures:
            logger.warning("site %s is down: %s", self.name, error)
        self._announce_report()

    def status_requested(self) -> None:
        """A status call goes out: its report will count some of our requests open from now on.

        The site counts its requests at some moment between the call and the
        answer. Subtracting the most of ours open in that window from the
        report never leaves a phantom load of our own finished requests on a
        site (which sent every request to the other sites until the next
        report); at worst it misses someone else's load for one poll.
        """
        self._peak_in_flight = self.in_flight.copy()

    def request_started(self, model: str) -> None:
        self.in_flight[model] += 1
        self.metrics.in_flight(self.name, 1)
        self._peak_in_flight[model] = max(self._peak_in_flight[model], self.in_flight[model])

    def request_ended(self, model: str) -> None:
        self.in_flight[model] -= 1
        self.metrics.in_flight(self.name, -1)

    def record_latency(self, model: str, seconds: float, now: float) -> None:
        previous = self.latency_s.get(model)
        if previous is None:
            self.latency_s[model] = seconds
        else:
            silence = now - self._latency_at[model]
            kept = (1 - LATENCY_SMOOTHING) * 0.5 ** (silence / LATENCY_HALF_LIFE_S)
            self.latency_s[model] = kept * previous + (1 - kept) * seconds
        self._latency_at[model] = now

    def recent_latency(self, model: str, now: float) -> float | None:
        """The model's moving time to first byte here, None if unknown or forgotten."""
        at = self._latency_at.get(model)
        if at is None or now - at > LATENCY_FORGOTTEN_AFTER_S:
            return None
        return self.latency_s[model]

    def model_status(self, model: str) -> ModelStatus | None:
        if self.status is None:
            return None
        return next((m for m in self.status.models if m.id == model), None)

    def can_launch(self, model: str, now: float) -> bool:
        """Whether this site could start `model` in a Slurm job now."""
        healthy = self.health(now) in ("up", "stale") and self.breaker.available(now)
        return self.slurm is not None and model in self.models and healthy

    def ready_jobs(self, model: str) -> list[JobStatus]:
        """The model's Slurm jobs that answer, those not about to reach their wall time first.

        A job within the handover window gets requests only while no fresher
        job is ready (and then only the one with the most time left), so
        traffic moves to a replacement as soon as it can answer, and the old
        job drains before its end.
        """
        status = self.model_status(model)
        if status is None or self.slurm is None:
            return []
        ready = [job for job in status.jobs if job.state == "running" and job.base_url]
        aged = time.time() - self.status.collected_at  # the report's time left is this old
        fresh = [
            job
            for job in ready
            if job.time_left_s is None or job.time_left_s - aged >= self.slurm.handover_s
        ]
        if fresh or not ready:
            return fresh
        return [max(ready, key=lambda job: job.time_left_s or 0.0)]

    def endpoint(self, model: str) -> str:
        """Base URL for a request for `model`: the site's, or one of the model's ready jobs',
        and under it the model's own route where the site streams it directly (no hop
        through the site's multi-model ingress)."""
        status = self.model_status(model)
        route = status.route if status else ""
        jobs = self.ready_jobs(model)
        if not jobs:
            return self.config.url + route
        return jobs[next(self._turn) % len(jobs)].base_url.rstrip("/") + route

    def full(self, model: str) -> bool:
        """This replica has as many requests for `model` open here as the site may take."""
        bound = self.config.max_in_flight
        return bound is not None and self.in_flight[model] >= bound

    def candidate(self, model: str, now: float) -> Candidate | None:
        """This site as a placement candidate for `model`, or None if it cannot take it now."""
        health = self.health(now)
        if model not in self.models or health == "down" or not self.breaker.available(now):
            return None
        status = self.model_status(model)
        if status is not None and status.state in ("unhealthy", "not_deployed"):
            return None
        if self.slurm is not None and not self.ready_jobs(model):
            return None  # nothing runs there: a cold start, not a placement
        if self.full(model):
            return None
        return Candidate(
            site=self.name,
            priority=self.config.priority,
            ready_replicas=status.replicas_running if status else 0,
            reported_requests=(status.ongoing_requests + status.queued_requests) if status else 0,
            in_flight_at_report=self.in_flight_at_report[model],
            in_flight=self.in_flight[model],
            latency_s=self.recent_latency(model, now),
            fresh=health == "up",
        )


class StatusPoller:
    """Polls one site's status through its client until stopped."""

    def __init__(self, state: SiteState, client: SiteClient, transport: Transport):
        self.state = state
        self.client = client
        self.transport = transport
        self._task: asyncio.Task | None = None
        self._hurry_until = 0.0
        self._hurry_interval_s = 1.0
        self._woken = asyncio.Event()
        self.polled = asyncio.Event()  # set once the first status call has come back

    def hurry(self, until: float, interval_s: float) -> None:
        """Poll every `interval_s` until `until` (monotonic): a cold start is being watched."""
        self._hurry_until = max(self._hurry_until, until)
        self._hurry_interval_s = interval_s
        self._woken.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.close()

    async def poll_once(self) -> None:
        self.state.status_requested()
        try:
            status = await self.client.status()
        except SiteCallTimeout as exc:
            self.state.record_status_failure(str(exc))
        except ValidationError as exc:
            self.state.record_status_failure(f"status report is malformed: {exc}")
        except Exception as exc:  # the channel's own failure: auth, network, endpoint offline
            self.state.record_status_failure(f"{type(exc).__name__}: {exc}")
        else:
            if status.reachable and (unreachable := await self.transport.probe()):
                # The site answers its channel, but the gateway's requests cannot reach it.
                status = status.model_copy(update={"reachable": False, "error": unreachable})
            self.state.record_status(status, time.monotonic())
        self.state.report_metrics()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            finally:
                self.polled.set()
            interval_s = self.state.config.channel.poll_interval_s
            if time.monotonic() < self._hurry_until:
                interval_s = min(interval_s, self._hurry_interval_s)
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._woken.wait(), max(0.0, interval_s - (time.monotonic() - started))
                )
