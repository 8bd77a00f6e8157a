"""A site's models in Slurm jobs: render the batch script, submit, list, cancel.

Everything here runs where the site functions run (the gateway's process on
one machine, a login node through Globus Compute at a real site) and talks
to Slurm only through its commands (`sbatch`, `squeue`, `scancel`), so it
works with any Slurm a user can submit to. What Slurm does not know (how far
a job got in starting its Ray cluster and model, and where its endpoint is)
the job appends to its events file in `slurm.state_dir`, on a filesystem
that login and compute nodes share.

Launches hold a file lock in the state folder while they look at the queue
and submit, so any number of gateway replicas, keepers and users asking at
once submit one job.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2

from deployments.errors import FirstError
from deployments.site_config import AutoscalingChoice, ModelConfig, SiteConfig
from deployments.site_status import ACTIVE_JOB_STATES, JobState, JobStatus
from deployments.slurm_job import append_event

DEFAULT_TEMPLATE = (
    Path(__file__).resolve().parent.parent / "cluster_configs/slurm/ray-site.sbatch.j2"
)
SLURM_TIMEOUT_S = 30.0
# squeue fields: id, name, state, reason, node list, time left.
SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%L"
ACTIVE_SLURM_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"}
)
# Finished jobs' events files older than this are not reported any more.
HISTORY_S = 3600.0
LOG_TAIL_LINES = 20
LOG_LINE_CHARS = 300


class SlurmError(FirstError):
    """A Slurm command failed; the message is one line and carries Slurm's own words."""


def run_slurm(*args: str, stdin: str | None = None) -> str:
    """Run a Slurm command and return its stdout; SlurmError with its message otherwise."""
    try:
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise SlurmError(
            f"`{args[0]}` not found: this machine has no Slurm client on PATH (run the site "
            "functions where Slurm is, e.g. a login node through Globus Compute)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{args[0]}` did not answer within {SLURM_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise SlurmError(f"{args[0]} failed: {message}")
    return done.stdout


def job_name(site: SiteConfig, model_id: str) -> str:
    return f"first-{site.name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model_id)}"


class SiteJobs:
    """The Slurm jobs of one site, and the folder where they keep their scripts, logs, events."""

    def __init__(self, site: SiteConfig):
        if site.slurm is None:
            raise ValueError(f"site {site.name} has no slurm section")
        self.site = site
        self.slurm = site.slurm
        self.root = self.slurm.state_dir / site.name
        self.events_dir = self.root / "events"
        self.logs_dir = self.root / "logs"
        self.scripts_dir = self.root / "scripts"

    # -- the batch script --------------------------------------------------

    def render_script(self, model: ModelConfig, python: str | None = None) -> str:
        """The batch script for one allocation of `model` (see ray-site.sbatch.j2)."""
        template_path = self.slurm.template or DEFAULT_TEMPLATE
        try:
            template = jinja2.Template(
                template_path.read_text(),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
            )
        except OSError as exc:
            raise SlurmError(
                f"slurm.template: cannot read {template_path} ({exc.strerror})"
            ) from None
        except jinja2.TemplateError as exc:
            raise SlurmError(f"slurm.template: {template_path}: {exc}") from None
        # The job serves this model alone, on the Serve address of the site config.
        spec_site = self.site.model_copy(update={"models": [in_allocation(model)], "slurm": None})
        spec_site.serve.host = self.slurm.serve_host
        spec = {
            "site": spec_site.model_dump(mode="json"),
            "start_timeout_s": self.slurm.start_timeout_s,
            "events_dir": str(self.events_dir),
        }
        return template.render(
            site=self.site.name,
            model_id=model.id,
            job_name=job_name(self.site, model.id),
            job=self.slurm.job_for(model.slurm),
            setup=self.slurm.setup,
            ray_cpus=self.slurm.ray_cpus_per_node,
            haproxy=self.site.ray.haproxy.enabled,
            python=shlex.quote(python or self.slurm.python or sys.executable),
            workdir=shlex.quote(str(Path.cwd())),
            log_path=str(self.logs_dir / "%j.log"),
            events_path=shlex.quote(str(self.events_dir)) + '/"$SLURM_JOB_ID".jsonl',
            spec=json.dumps(spec),
        )

    # -- submitting and cancelling -----------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for folder in (self.events_dir, self.logs_dir, self.scripts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.root / "launch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def launch(self, model_id: str, at_least: int = 1) -> tuple[bool, list[JobStatus]]:
        """Make sure `at_least` jobs of the model are queued or running and not about to end.

        Submits one job when fewer are; (submitted, the model's active jobs).
        """
        model = self.site.model(model_id)
        with self._locked():
            active = [j for j in self.jobs(model_id) if self.counts_as_active(j)]
            if len(active) >= at_least:
                return False, active
            script = self.render_script(model)
            path = self.scripts_dir / f"{job_name(self.site, model_id)}-{time.time():.6f}.sbatch"
            path.write_text(script)
            job_id = run_slurm("sbatch", "--parsable", str(path)).strip().split(";")[0]
            if not job_id.isdigit():
                raise SlurmError(f"sbatch answered {job_id!r}, not a job id")
            append_event(
                self.events_dir / f"{job_id}.jsonl", "submitted", model=model_id, script=str(path)
            )
            return True, [*active, *self.jobs(model_id, only=job_id)]

    def counts_as_active(self, job: JobStatus) -> bool:
        """Queued or running, with more than the handover window of wall time left."""
        ending = job.time_left_s is not None and job.time_left_s < self.slurm.handover_s
        return job.state in ACTIVE_JOB_STATES and not (job.state == "running" and ending)

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            run_slurm("scancel", *job_ids)

    # -- what the jobs are doing -------------------------------------------

    def jobs(self, model_id: str | None = None, only: str | None = None) -> list[JobStatus]:
        """Every job of the site Slurm still knows, and those that ended within the last hour."""
        queue = self._queue()
        known = (
            {p.stem for p in self.events_dir.glob("*.jsonl")} if self.events_dir.is_dir() else set()
        )
        now = time.time()
        jobs = []
        for job_id in sorted(known | set(queue), key=int):
            if only is not None and job_id != only:
                continue
            events = _read_events(self.events_dir / f"{job_id}.jsonl")
            line = queue.get(job_id)
            model = events.get("submitted", {}).get("model") or self._model_of(line)
            if model is None or (model_id is not None and model != model_id):
                continue
            job = self._job_status(job_id, model, line, events)
            last = max((e["at"] for e in events.values()), default=now)
            if line is None and job.state not in ACTIVE_JOB_STATES and now - last > HISTORY_S:
                continue
            jobs.append(job)
        return jobs

    def _queue(self) -> dict[str, list[str]]:
        out = run_slurm(
            "squeue",
            "--noheader",
            "--states=all",
            f"--user={getpass.getuser()}",
            f"--format={SQUEUE_FORMAT}",
        )
        prefix = f"first-{self.site.name}-"
        rows = {}
        for line in out.splitlines():
            fields = line.strip().split("|")
            if len(fields) == 6 and fields[1].startswith(prefix):
                rows[fields[0]] = fields
        return rows

    def _model_of(self, line: list[str] | None) -> str | None:
        """A job the queue knows but whose events were lost: its model from the job name."""
        if line is None:
            return None
        return next((m.id for m in self.site.models if job_name(self.site, m.id) == line[1]), None)

    def _job_status(
        self, job_id: str, model: str, line: list[str] | None, events: dict
    ) -> JobStatus:
        slurm_state = line[2] if line else None
        ready = events.get("ready", {})
        state = _job_state(slurm_state, events)
        status = JobStatus(
            job_id=job_id,
            model=model,
            state=state,
            slurm_state=slurm_state,
            reason=line[3] if line and slurm_state == "PENDING" else None,
            nodes=(line[4] or None) if line else None,
            time_left_s=parse_slurm_duration(line[5])
            if line and state in ACTIVE_JOB_STATES
            else None,
            base_url=ready.get("base_url") if state == "running" else None,
            dashboard_url=ready.get("dashboard_url") if state == "running" else None,
            submitted_at=events.get("submitted", {}).get("at"),
            started_at=events.get("started", {}).get("at"),
            ray_up_at=events.get("ray_up", {}).get("at"),
            ready_at=ready.get("at"),
        )
        if state == "failed":
            status.reason = _failure_reason(slurm_state, events)
            status.log_tail = self._log_tail(job_id)
        return status

    def _log_tail(self, job_id: str) -> str | None:
        try:
            lines = (self.logs_dir / f"{job_id}.log").read_text(errors="replace").splitlines()
        except OSError:
            return None
        return "\n".join(line[:LOG_LINE_CHARS] for line in lines[-LOG_TAIL_LINES:])


def in_allocation(model: ModelConfig) -> ModelConfig:
    """The model as a job serves it: never fewer than one replica.

    On a Slurm site the preset (hot, warm, cold) says how many allocations
    the keeper keeps; inside an allocation, which exists only to serve the
    model, Serve keeps at least one replica and the job is ready only once
    it answers.
    """
    serve = model.autoscaling.serve_config()
    floor = {"min_replicas": max(serve.get("min_replicas", 1), 1)}
    floor["initial_replicas"] = max(serve.get("initial_replicas", 1), floor["min_replicas"])
    floor["max_replicas"] = max(serve.get("max_replicas", 1), floor["min_replicas"])
    choice = {"preset": model.autoscaling.preset, **(model.autoscaling.model_extra or {}), **floor}
    # Its Slurm fields are the job's own, already in the batch script.
    autoscaling = AutoscalingChoice.model_validate(choice)
    return model.model_copy(update={"autoscaling": autoscaling, "slurm": {}})


def _job_state(slurm_state: str | None, events: dict) -> JobState:
    """What became of a job, from Slurm's state (while it remembers) and the job's events."""
    exited = "exited" in events
    if slurm_state in ACTIVE_SLURM_STATES and not exited:
        if slurm_state == "PENDING":
            return "queued"
        if "failed" in events:
            return "failed"
        return "running" if "ready" in events else "starting"
    if slurm_state is None and not exited and "ready" not in events and "failed" not in events:
        # Events of a job Slurm does not list: gone without a word, or not yet listed.
        return "failed" if "started" in events else "cancelled"
    if "ready" in events:
        return "ended"
    if slurm_state == "CANCELLED" or (
        "stopping" in events and slurm_state != "TIMEOUT" and "failed" not in events
    ):
        return "cancelled"  # stopped by scancel (or signalled) before it was ready
    return "failed"


def _failure_reason(slurm_state: str | None, events: dict) -> str:
    if "failed" in events:
        return events["failed"].get("reason") or "the job failed while starting"
    if slurm_state == "TIMEOUT":
        return "the wall time ran out before the model answered"
    code = events.get("exited", {}).get("code")
    if code is not None:
        return f"the job exited with code {code} before the model answered"
    return f"the job ended ({slurm_state or 'gone from the queue'}) before the model answered"


def parse_slurm_duration(text: str) -> float | None:
    """Seconds from Slurm's [D-]HH:MM:SS / MM:SS; None for UNLIMITED or NOT_SET.

    A running job past its limit (Slurm checks limits every 30 s or so) shows
    INVALID: no time left, not unlimited.
    """
    text = text.strip()
    if text == "INVALID" or text.startswith("-"):
        return 0.0
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _read_events(path: Path) -> dict[str, dict]:
    """The last event of each kind in a job's events file (a torn last line is skipped)."""
    events: dict[str, dict] = {}
    try:
        text = path.read_text()
    except OSError:
        return events
    for line in text.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = json.loads(line)
            events[event["event"]] = event
    return events
