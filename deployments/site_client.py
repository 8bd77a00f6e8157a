"""The gateway's and the keeper's side of the site functions: one typed async client per site.

The site functions (site_functions.py, batch_jobs.py) take and return plain
JSON, so the same functions run in-process and on a login node through
Globus Compute. This client is the other end of that wire: it sends a site's
config with every call, reads each answer back into the model the function
documents, and holds every call to one timeout policy:

- a status call gets the site's status timeout (the function's own HTTP
  timeout) plus a second for the channel, since a poller must not hang;
- every other call (launch, stop, the batch calls) gets the site's control
  timeout.

A call past its timeout is cancelled and raises `SiteCallTimeout`; what the
function itself raised (Slurm's refusal, an unknown model) comes through as
the channel delivers it. The channel is anything that runs a function and
returns a `concurrent.futures.Future` (`ControlChannel`); the gateway builds
it (serve_app/routing/control_channel.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from deployments import batch_jobs, site_functions
from deployments.batch_jobs import BatchPoll, BatchStopResult, BatchSubmission, StageResult
from deployments.site_config import SiteConfig
from deployments.site_functions import LaunchResult, RelayedAnswer, StopResult
from deployments.site_status import SiteStatus

Answer = TypeVar("Answer", bound=BaseModel)
# What a status or relay call may take beyond its own HTTP timeout: the channel's hop.
CHANNEL_HOP_S = 1.0


class ControlChannel(Protocol):
    """Runs site functions for one site: a thread pool here, Globus Compute at a real site."""

    def submit(
        self, function: Callable[..., Any], *args: Any
    ) -> concurrent.futures.Future: ...  # pragma: no cover - a protocol

    def verify(self) -> None:
        """Prove the channel can be used; raise saying why not."""

    def close(self) -> None: ...


class SiteCallTimeout(TimeoutError):
    """A site function did not answer within its timeout; the message says which and how long."""


class SiteClient:
    """One site's functions through its control channel, answers typed."""

    def __init__(
        self,
        site: SiteConfig,
        channel: ControlChannel,
        status_timeout_s: float,
        control_timeout_s: float,
    ):
        self.site = site
        self.channel = channel
        self.status_timeout_s = status_timeout_s
        self.control_timeout_s = control_timeout_s
        # Sent with every call: the site functions take JSON only.
        self._config = site.model_dump(mode="json")

    @property
    def name(self) -> str:
        return self.site.name

    async def status(self) -> SiteStatus:
        """The site's status report (never an error for an unreachable site: `reachable`)."""
        timeout_s = self.status_timeout_s
        answer = await self._call(
            site_functions.site_status, timeout_s + CHANNEL_HOP_S, self._config, timeout_s
        )
        return SiteStatus.model_validate(answer)

    async def launch(self, model: str, at_least: int = 1) -> LaunchResult:
        answer = await self._control(site_functions.launch, self._config, model, at_least)
        return LaunchResult.model_validate(answer)

    async def stop(self, model: str, job_id: str | None = None) -> StopResult:
        answer = await self._control(site_functions.stop, self._config, model, job_id)
        return StopResult.model_validate(answer)

    async def stage_batch(self, submission_id: str, part: int, lines: list[str]) -> StageResult:
        answer = await self._control(batch_jobs.stage, self._config, submission_id, part, lines)
        return StageResult.model_validate(answer)

    async def submit_batch(
        self, submission_id: str, model: str, endpoint: str, parts: int
    ) -> BatchSubmission:
        answer = await self._control(
            batch_jobs.submit, self._config, submission_id, model, endpoint, parts
        )
        return BatchSubmission.model_validate(answer)

    async def poll_batch(self, dashboard_url: str, submission_id: str, after_seq: int) -> BatchPoll:
        answer = await self._control(batch_jobs.poll, dashboard_url, submission_id, after_seq)
        return BatchPoll.model_validate(answer)

    async def stop_batch(self, dashboard_url: str, submission_id: str) -> BatchStopResult:
        answer = await self._control(batch_jobs.stop, dashboard_url, submission_id)
        return BatchStopResult.model_validate(answer)

    async def relay(
        self, url: str, body: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[RelayedAnswer, float]:
        """One request sent on from the site (the globus-compute transport), within
        `timeout_s` there and the channel's hop; and the seconds submitting it took."""
        started = time.perf_counter()
        future = self.channel.submit(site_functions.relay, url, body, headers, timeout_s)
        submit_s = time.perf_counter() - started
        answer = await self._awaited(future, site_functions.relay, timeout_s + CHANNEL_HOP_S)
        return RelayedAnswer.model_validate(answer), submit_s

    def verify(self) -> None:
        self.channel.verify()

    def close(self) -> None:
        self.channel.close()

    async def _control(self, function: Callable[..., Any], *args: Any) -> Any:
        return await self._call(function, self.control_timeout_s, *args)

    async def _call(self, function: Callable[..., Any], timeout_s: float, *args: Any) -> Any:
        """The one place a site function is submitted and awaited (the relay aside: it
        times its submission)."""
        return await self._awaited(self.channel.submit(function, *args), function, timeout_s)

    async def _awaited(
        self, future: concurrent.futures.Future, function: Callable[..., Any], timeout_s: float
    ) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()
            raise SiteCallTimeout(
                f"site {self.name}: {function.__name__} did not answer within {timeout_s:.0f} s"
            ) from None
