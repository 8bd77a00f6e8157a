"""Starting a model that runs nowhere: one Slurm job, callers held a while or told when to return.

A request for a model that no site runs, but that a Slurm site can start,
comes here (FIRST's cold start). The best such site is chosen (configured
priority first, then one already starting the model, then the one with the
fewest jobs queued), a job is launched there unless one is already queued or
starting, and the caller waits up to `cold_start.hold_s` for the model to
answer. After that, or at once with a hold of 0, the answer is 503 with a
Retry-After estimated from the start times seen at that site.

However many requests arrive together, one launch call leaves this replica
per site and model; the site function itself is idempotent under a file
lock, so other replicas and the keeper add no second job either. A model
whose last jobs died while starting is not launched again until those
failures age out: the callers get 503 with the reason and the tail of the
job's log.
"""

from __future__ import annotations

import asyncio
import logging
import time

from deployments.site_client import SiteCallTimeout
from deployments.site_status import JobStatus, ModelStatus
from serve_app.config import ColdStartConfig
from serve_app.errors import ModelStartFailedError, ModelStartingError
from serve_app.metrics import GatewayMetrics
from serve_app.routing.site_state import SiteState, StatusPoller

logger = logging.getLogger(__name__)
# A model's job is "ours" for this long after launch even before a report shows it.
LAUNCH_MEMORY_S = 120.0
# A launch the site refused (Slurm's error) is not tried again for this long.
REFUSAL_MEMORY_S = 30.0


class ColdStarter:
    def __init__(
        self,
        config: ColdStartConfig,
        pollers: dict[str, StatusPoller],
        metrics: GatewayMetrics,
    ):
        self.config = config
        self.metrics = metrics
        self.pollers = pollers
        self._launching: dict[tuple[str, str], asyncio.Task] = {}
        # (site, model) -> (monotonic time of the launch, its job id)
        self._launched: dict[tuple[str, str], tuple[float, str]] = {}
        # (site, model) -> (until when, the error) of a launch the site refused
        self._refused: dict[tuple[str, str], tuple[float, ModelStartFailedError]] = {}

    async def bring_up(self, model: str, sites: list[SiteState]) -> None:
        """Return once `model` answers at one of `sites`; 503 if not within the hold."""
        state = self.choose(model, sites)
        deadline = time.monotonic() + self.config.hold_s
        self.pollers[state.name].hurry(
            deadline + self.config.hold_s + 60.0, self.config.poll_interval_s
        )
        job_id = await self._ensure_job(state, model)
        while True:
            status = state.model_status(model)
            if state.ready_jobs(model):
                return
            failed = _failed_since_launch(status, job_id)
            if failed is not None:
                raise _start_failed(state, model, failed)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._still_starting(state, model, status, job_id)
            await state.next_report(remaining)

    def choose(self, model: str, sites: list[SiteState]) -> SiteState:
        """Priority first, then a site already starting the model, then the shortest queue."""

        def rank(state: SiteState) -> tuple:
            status = state.model_status(model)
            active = status.active_jobs() if status else []
            queued = sum(
                j.state == "queued"
                for m in (state.status.models if state.status else [])
                for j in m.jobs
            )
            return (-state.config.priority, not active, queued, state.name)

        return min(sites, key=rank)

    async def _ensure_job(self, state: SiteState, model: str) -> str | None:
        """The id of the model's job being started at the site, launching one if needed."""
        key = (state.name, model)
        status = state.model_status(model)
        active = status.active_jobs() if status else []
        if active:
            return active[-1].job_id
        launched = self._launched.get(key)
        recent = launched is not None and time.monotonic() - launched[0] < LAUNCH_MEMORY_S
        if recent and not _report_knows(status, launched[1]):
            return launched[1]  # launched here; the next report will show it
        refused = self._refused.get(key)
        if refused is not None and time.monotonic() < refused[0]:
            raise refused[1]
        if status is not None:
            _refuse_after_failures(state, model, status, self.config.max_failed_starts)
        task = self._launching.get(key)
        if task is None:
            task = asyncio.ensure_future(self._launch(state, model))
            self._launching[key] = task
            task.add_done_callback(lambda _: self._launching.pop(key, None))
        return await asyncio.shield(task)

    async def _launch(self, state: SiteState, model: str) -> str:
        client = self.pollers[state.name].client
        try:
            result = await client.launch(model)
        except SiteCallTimeout:
            self.metrics.cold_start(model, state.name, "timeout")
            raise ModelStartFailedError(
                f"Site {state.name!r} did not answer the request to start {model!r} within "
                f"{client.control_timeout_s:.0f} s. Retry later.",
                retry_after_s=30,
            ) from None
        except Exception as exc:  # Slurm's refusal, a missing sbatch, the channel failing
            logger.warning("could not start %s at %s: %s", model, state.name, exc)
            self.metrics.cold_start(model, state.name, "refused")
            error = ModelStartFailedError(
                f"Site {state.name!r} could not start the model {model!r}: {exc}",
                retry_after_s=int(REFUSAL_MEMORY_S),
            )
            # Not asked again for every request: the answer would be the same.
            self._refused[(state.name, model)] = (time.monotonic() + REFUSAL_MEMORY_S, error)
            raise error from None
        job_id = result.jobs[-1].job_id
        verb = "submitted" if result.submitted else "found"
        self.metrics.cold_start(model, state.name, verb)
        logger.info("cold start: %s job %s for %s at %s", verb, job_id, model, state.name)
        self._launched[(state.name, model)] = (time.monotonic(), job_id)
        return job_id

    def _still_starting(
        self, state: SiteState, model: str, status: ModelStatus | None, job_id: str | None
    ) -> ModelStartingError:
        job = _job(status, job_id)
        if job is not None and job.state == "queued":
            detail = f"Slurm job {job.job_id} queued: {job.reason or 'waiting'}"
        elif job is not None:
            detail = f"Slurm job {job.job_id} {job.state}"
        else:
            detail = f"Slurm job {job_id or '?'} submitted"
        retry_after = self.retry_after_s(state, model, job)
        return ModelStartingError(
            f"The model {model!r} is starting on site {state.name!r} ({detail}). "
            f"Retry in about {retry_after} s.",
            retry_after_s=retry_after,
        )

    def retry_after_s(self, state: SiteState, model: str, job: JobStatus | None) -> int:
        """What is left of a typical start at this site, counted from the job's submission."""
        typical = state.typical_start_s(model) or self.config.expected_start_s
        elapsed = time.time() - job.submitted_at if job and job.submitted_at else 0.0
        left = typical - elapsed
        return max(int(left + 0.999), 2) if left > 0 else max(int(typical * 0.1), 2)


def _job(status: ModelStatus | None, job_id: str | None) -> JobStatus | None:
    if status is None:
        return None
    return next((j for j in status.jobs if j.job_id == job_id), None)


def _report_knows(status: ModelStatus | None, job_id: str) -> bool:
    return _job(status, job_id) is not None


def _failed_since_launch(status: ModelStatus | None, job_id: str | None) -> JobStatus | None:
    job = _job(status, job_id)
    return job if job is not None and job.state == "failed" else None


def _start_failed(state: SiteState, model: str, job: JobStatus) -> ModelStartFailedError:
    tail = (job.log_tail or "").strip().splitlines()[-3:]
    log = f" Last lines of its log: {' | '.join(tail)}" if tail else ""
    return ModelStartFailedError(
        f"The model {model!r} failed to start on site {state.name!r}: Slurm job {job.job_id} "
        f"{job.reason or 'failed'}.{log}",
        retry_after_s=60,
    )


def _refuse_after_failures(state: SiteState, model: str, status: ModelStatus, limit: int) -> None:
    """503 without a launch when the model's last `limit` jobs all died while starting."""
    failed = status.failed_starts()
    if len(failed) >= limit:
        error = _start_failed(state, model, failed[-1])
        error.message = (
            f"{error.message} Its last {len(failed)} jobs failed; no more are started until an "
            "operator looks (first slurm status / first slurm launch)."
        )
        error.retry_after_s = 600
        raise error
