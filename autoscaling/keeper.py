"""The hot-node keeper: Slurm allocations per model, kept alive, replaced, added and released.

Ray Serve scales replicas inside an allocation; the keeper scales the
allocations themselves, at every Slurm site of the federation, through the
same control channel and site functions as the gateway (so it works through
Globus Compute at a real site). Every `interval_s` it reads each site's
status and, per model:

- keeps at least the model's minimum of allocations (hot: 1);
- replaces a job before its wall time ends: once a running job has less
  than `slurm.handover_s` left, it submits a replacement, and once the
  replacement answers (the gateway moves new requests to it at once), it
  cancels the old job after `drain_s`, so a hot model has no gap;
- adds an allocation when the requests waiting per ready allocation stay
  above `scale_up_queue` for `scale_up_window_s` (up to allocations.max);
- releases one after `idle_window_s` without requests, never below the
  minimum.

`decide` is a pure function of the status and what the keeper remembers, so
each rule is tested alone; `Keeper` runs it and acts through each site's
`SiteClient`. Every decision is logged with its reason and handed to
`on_decision` (the gateway counts it in `first_keeper_decisions_total`): the
keeper runs beside the gateway and imports nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from autoscaling.config import KeeperConfig
from deployments.site_client import SiteClient
from deployments.site_config import ModelConfig
from deployments.site_status import JobStatus, ModelStatus, SiteStatus

logger = logging.getLogger("first.keeper")
Action = Literal["launch", "stop"]


@dataclass(frozen=True)
class Decision:
    action: Action
    model: str
    reason: Literal["minimum", "handover", "queue", "idle", "superseded"]
    detail: str
    at_least: int = 1
    job_id: str | None = None


@dataclass(frozen=True)
class Rules:
    """The keeper's parameters and the site's handover window."""

    keeper: KeeperConfig
    handover_s: float
    max_failed_starts: int = 2


@dataclass
class ModelMemory:
    """What the keeper remembers about one model at one site between two looks."""

    last_busy: float
    queue_high_since: float | None = None
    failures_reported: bool = False
    # job id of an ending job -> when a ready replacement was first seen
    replaced_since: dict[str, float] = field(default_factory=dict)


def decide(
    model: ModelConfig, status: ModelStatus, rules: Rules, memory: ModelMemory, now: float
) -> list[Decision]:
    """What to do about one model now; updates `memory`.

    No job is submitted for a model whose last `max_failed_starts` jobs died
    while starting: that needs an operator, not another job.
    """
    decisions = _decide(model, status, rules, memory, now)
    failed = status.failed_starts()
    if len(failed) < rules.max_failed_starts:
        return decisions
    held = [d for d in decisions if d.action == "launch"]
    if held and not memory.failures_reported:
        logger.warning(
            "not starting %s: its last %d jobs died while starting (job %s: %s)",
            model.id,
            len(failed),
            failed[-1].job_id,
            failed[-1].reason,
        )
    memory.failures_reported = bool(held)
    return [d for d in decisions if d.action != "launch"]


def _decide(
    model: ModelConfig, status: ModelStatus, rules: Rules, memory: ModelMemory, now: float
) -> list[Decision]:
    config, handover_s = rules.keeper, rules.handover_s
    active = status.active_jobs()
    ending = [j for j in active if _ending(j, handover_s)]
    fresh = [j for j in active if j not in ending]
    ready = [j for j in active if j.state == "running"]
    load = status.ongoing_requests + status.queued_requests
    if load > 0:
        memory.last_busy = now
    idle_s = now - memory.last_busy
    wanted = model.min_allocations > 0 or idle_s < config.idle_window_s

    decisions = [*_release_superseded(model.id, ending, fresh, rules, memory, now)]
    queue_per_allocation = status.queued_requests / max(len(ready), 1)
    if queue_per_allocation > config.scale_up_queue and ready:
        if memory.queue_high_since is None:
            memory.queue_high_since = now
    else:
        memory.queue_high_since = None
    floor = model.min_allocations
    keep = len(fresh) + len(ending) - len(decisions)
    if (
        memory.queue_high_since is not None
        and now - memory.queue_high_since >= config.scale_up_window_s
        and len(fresh) < model.allocations.max
    ):
        detail = f"{queue_per_allocation:.1f} requests waiting per allocation for {now - memory.queue_high_since:.0f} s"
        memory.queue_high_since = None
        return [*decisions, Decision("launch", model.id, "queue", detail, at_least=len(fresh) + 1)]
    if wanted and ending and len(fresh) < min(keep, model.allocations.max):
        job = min(ending, key=lambda j: j.time_left_s or 0.0)
        detail = f"job {job.job_id} has {job.time_left_s:.0f} s of wall time left"
        return [
            *decisions,
            Decision("launch", model.id, "handover", detail, at_least=len(fresh) + 1),
        ]
    if len(fresh) < floor:
        detail = f"{len(fresh)} allocation(s), minimum {floor}"
        return [*decisions, Decision("launch", model.id, "minimum", detail, at_least=floor)]
    if idle_s >= config.idle_window_s and len(fresh) > floor and not decisions:
        job = min(fresh, key=lambda j: (j.state == "running", j.time_left_s or float("inf")))
        detail = f"no requests for {idle_s:.0f} s; {len(fresh)} allocation(s), minimum {floor}"
        memory.last_busy = now  # one release per idle window
        return [Decision("stop", model.id, "idle", detail, job_id=job.job_id)]
    return decisions


def _ending(job: JobStatus, handover_s: float) -> bool:
    return job.state == "running" and job.time_left_s is not None and job.time_left_s < handover_s


def _release_superseded(  # noqa: PLR0913 (pure helper of decide: its state, spelled out)
    model_id: str,
    ending: list[JobStatus],
    fresh: list[JobStatus],
    rules: Rules,
    memory: ModelMemory,
    now: float,
) -> list[Decision]:
    """Cancel an ending job `drain_s` after a job with more time left became ready.

    The successor is a fresh ready job if there is one, else the ready ending
    job with the most time left (a replacement that took longer to start
    than the wall time allowed): the gateway already sends it every request.
    """
    ready_fresh = [j for j in fresh if j.state == "running"]
    ready_ending = sorted(ending, key=lambda j: j.time_left_s or 0.0, reverse=True)
    successor = ready_fresh[0] if ready_fresh else (ready_ending[0] if ending else None)
    decisions = []
    for job in ending:
        if successor is None or job is successor:
            memory.replaced_since.pop(job.job_id, None)
            continue
        since = memory.replaced_since.setdefault(job.job_id, now)
        if now - since >= rules.keeper.drain_s:
            detail = f"job {successor.job_id} took over from job {job.job_id}"
            decisions.append(Decision("stop", model_id, "superseded", detail, job_id=job.job_id))
    known = {j.job_id for j in ending}
    for job_id in list(memory.replaced_since):
        if job_id not in known:
            del memory.replaced_since[job_id]
    return decisions


class Keeper:
    """Runs `decide` for the models of the Slurm sites in `sites` and carries the decisions out."""

    def __init__(
        self,
        config: KeeperConfig,
        sites: dict[str, SiteClient],
        max_failed_starts: int,
        on_decision: Callable[[str, Decision], None] | None = None,
    ):
        self.config = config
        self.max_failed_starts = max_failed_starts
        self.sites = {name: c for name, c in sites.items() if c.site.slurm is not None}
        self.on_decision = on_decision
        self.memory: dict[tuple[str, str], ModelMemory] = {}
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Run in the background of the current event loop (inside a gateway)."""
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(self._stopping))

    async def stop(self) -> None:
        self._stopping.set()
        await self._task
        self.close()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        stop_event = stop_event or asyncio.Event()
        logger.info(
            "keeper watching %s every %.0f s",
            ", ".join(self.sites) or "no Slurm site",
            self.config.interval_s,
        )
        while not stop_event.is_set():
            await self.look_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), self.config.interval_s)

    async def look_once(self) -> list[tuple[str, Decision]]:
        """Read every site once and carry out what `decide` says; a failure skips the site."""
        taken = []
        for name, client in self.sites.items():
            try:
                report = await client.status()
            except Exception as exc:
                logger.warning("site %s: no status (%s); nothing decided", name, exc)
                continue
            if not report.reachable:
                logger.warning("site %s unreachable (%s); nothing decided", name, report.error)
                continue
            for decision in self._decide(client, report):
                await self._carry_out(client, decision)
                taken.append((name, decision))
        return taken

    def _decide(self, client: SiteClient, report: SiteStatus) -> list[Decision]:
        now = time.monotonic()
        site = client.site
        rules = Rules(self.config, site.slurm.handover_s, self.max_failed_starts)
        decisions = []
        for status in report.models:
            memory = self.memory.setdefault((site.name, status.id), ModelMemory(last_busy=now))
            decisions += decide(site.model(status.id), status, rules, memory, now)
        return decisions

    async def _carry_out(self, client: SiteClient, decision: Decision) -> None:
        name = client.name
        if self.on_decision is not None:
            self.on_decision(name, decision)
        what = (
            f"{decision.action} {decision.model} at {name} ({decision.reason}: {decision.detail})"
        )
        try:
            if decision.action == "launch":
                launched = await client.launch(decision.model, decision.at_least)
                jobs = ", ".join(j.job_id for j in launched.jobs)
                outcome = "submitted a job" if launched.submitted else "enough jobs already"
                logger.info("%s: %s (active: %s)", what, outcome, jobs)
            else:
                stopped = await client.stop(decision.model, decision.job_id)
                logger.info("%s: cancelled %s", what, ", ".join(stopped.cancelled) or "nothing")
        except Exception as exc:
            logger.warning("%s failed: %s", what, exc)

    def close(self) -> None:
        for client in self.sites.values():
            client.close()
