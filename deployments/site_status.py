"""The site status schema, and the pure parsing that fills it.

The status function runs wherever the control channel runs it (in-process,
or on a login node through Globus Compute), so it reads the site over plain
HTTP: the Ray dashboard's Serve REST API for replica states, and each node's
Prometheus endpoint for request counts. The parsing lives here, free of I/O,
so it is unit-tested on captured text.
"""

from __future__ import annotations

import functools
import ssl
from collections import defaultdict
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

ModelState = Literal[
    "running",  # at least one replica answers
    "starting",  # replicas (or a Slurm job's Ray cluster) starting
    "queued",  # a Slurm job waits in the queue
    "stopped",  # no Slurm job: the next request starts one
    "failed",  # the last Slurm jobs died while starting
    "scaled_to_zero",
    "unhealthy",
    "not_deployed",
]
# What became of one Slurm job of a model.
JobState = Literal["queued", "starting", "running", "ended", "cancelled", "failed"]
ACTIVE_JOB_STATES = ("queued", "starting", "running")

STARTING_REPLICA_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING"})
# Serve gauges: requests inside a replica, and requests waiting at a handle.
ONGOING_METRIC = "ray_serve_replica_processing_queries"
QUEUED_METRIC = "ray_serve_deployment_queued_queries"


class JobStatus(BaseModel):
    """One Slurm job of a model: a Ray cluster in an allocation, and how far it got."""

    job_id: str
    model: str
    state: JobState
    slurm_state: str | None = Field(None, description="Slurm's own state, while it knows the job.")
    reason: str | None = Field(None, description="Why it waits (Slurm's reason), or why it failed.")
    nodes: str | None = Field(None, description="Slurm's node list.")
    time_left_s: float | None = Field(None, description="Wall time left; None when unlimited.")
    base_url: str | None = Field(None, description="The job's OpenAI endpoint, once ready.")
    dashboard_url: str | None = None
    submitted_at: float | None = None
    started_at: float | None = Field(None, description="The batch script began (queue wait ends).")
    ray_up_at: float | None = Field(None, description="Every node joined the Ray cluster.")
    ready_at: float | None = Field(None, description="The model answered a completion.")
    log_tail: str | None = Field(None, description="Last lines of the job's log (failed jobs).")

    @property
    def start_s(self) -> float | None:
        """Submission to ready: what a cold start took."""
        if self.ready_at is None or self.submitted_at is None:
            return None
        return self.ready_at - self.submitted_at


class ModelStatus(BaseModel):
    id: str
    engine: str
    state: ModelState
    ready: bool = Field(description="At least one replica is RUNNING: its engine can answer now.")
    replicas_running: int = 0
    replicas_starting: int = 0
    replicas_target: int = 0
    ongoing_requests: float = Field(0, description="Requests inside the model's replicas.")
    queued_requests: float = Field(0, description="Requests waiting in Serve for a replica.")
    route: str = Field(
        "",
        description="Path of the model's own endpoint under the site's base URL ('' when it "
        "is reached through the site's multi-model ingress).",
    )
    jobs: list[JobStatus] = Field(
        default_factory=list, description="Slurm jobs of the model (Slurm sites only)."
    )

    def active_jobs(self) -> list[JobStatus]:
        """The model's jobs queued, starting or running."""
        return [job for job in self.jobs if job.state in ACTIVE_JOB_STATES]

    def failed_starts(self) -> list[JobStatus]:
        """The model's most recent finished jobs that all died while starting, oldest first."""
        finished = [j for j in self.jobs if j.state in ("ended", "cancelled", "failed")]
        failed: list[JobStatus] = []
        for job in sorted(finished, key=lambda j: int(j.job_id), reverse=True):
            if job.state != "failed":
                break
            failed.insert(0, job)
        return failed


class SiteStatus(BaseModel):
    site: str
    reachable: bool
    error: str | None = None
    collected_at: float = Field(description="Unix time the status was read.")
    base_url: str
    app_status: str | None = None
    models: list[ModelStatus] = Field(default_factory=list)
    metrics_targets: list[str] = Field(
        default_factory=list,
        description="host:port of every Ray node's Prometheus endpoint at the site.",
    )


class ReplicaCounts(BaseModel):
    running: int = 0
    starting: int = 0
    target: int = 0
    healthy: bool = True


def parse_serve_applications(
    payload: dict, app_names: list[str]
) -> tuple[str | None, dict[str, ReplicaCounts]]:
    """The site's status (its worst application's) and replica counts per deployment over
    its applications, from `/api/serve/applications/`."""
    applications = payload.get("applications") or {}
    apps = [applications[name] for name in app_names if name in applications]
    if not apps:
        return None, {}
    counts: dict[str, ReplicaCounts] = {}
    deployments = [item for app in apps for item in (app.get("deployments") or {}).items()]
    for name, deployment in deployments:
        states = [replica.get("state") for replica in deployment.get("replicas") or []]
        counts[name] = ReplicaCounts(
            running=states.count("RUNNING"),
            starting=sum(state in STARTING_REPLICA_STATES for state in states),
            target=deployment.get("target_num_replicas") or 0,
            healthy=deployment.get("status") in ("HEALTHY", "UPSCALING", "DOWNSCALING"),
        )
    worst = next((app.get("status") for app in apps if app.get("status") != "RUNNING"), None)
    return worst or ("RUNNING" if len(apps) == len(app_names) else "DEPLOYING"), counts


def parse_serve_load(
    metrics_texts: list[str], app_names: list[str]
) -> dict[str, tuple[float, float]]:
    """(ongoing, queued) per deployment, summed over replicas, handles and nodes."""
    load: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for text in metrics_texts:
        for family in text_string_to_metric_families(_serve_load_lines(text)):
            if family.name not in (ONGOING_METRIC, QUEUED_METRIC):
                continue
            slot = 0 if family.name == ONGOING_METRIC else 1
            for sample in family.samples:
                if sample.labels.get("application") in app_names:
                    load[sample.labels.get("deployment", "")][slot] += sample.value
    return {name: (values[0], values[1]) for name, values in load.items()}


def _serve_load_lines(text: str) -> str:
    """Only the two gauges' lines: a node exports ~1 MB of metrics, and parsing all
    of it costs a quarter of a second of CPU in the gateway at every poll."""
    samples = (ONGOING_METRIC, QUEUED_METRIC)
    comments = tuple(f"# {kind} {name} " for kind in ("HELP", "TYPE") for name in samples)
    return "\n".join(
        line for line in text.splitlines() if line.startswith(samples) or line.startswith(comments)
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process for the status calls: building one loads the CA
    store, tens of milliseconds of CPU that a poll every few seconds should not pay."""
    import httpx

    return httpx.create_ssl_context()


def model_state(counts: ReplicaCounts | None) -> ModelState:
    if counts is None:
        return "not_deployed"
    if counts.running:
        return "running"
    if counts.starting or counts.target:
        return "starting"
    return "scaled_to_zero" if counts.healthy else "unhealthy"


def slurm_model_state(jobs: list[JobStatus], ready: bool) -> ModelState:
    """A Slurm model's state from its jobs: the most advanced active job wins."""
    states = {job.state for job in jobs}
    if ready:
        return "running"
    if states & {"running", "starting"}:
        return "starting"
    if "queued" in states:
        return "queued"
    finished = [job for job in jobs if job.state in ("ended", "cancelled", "failed")]
    if finished and finished[-1].state == "failed":
        return "failed"
    return "stopped"


def alive_node_metrics_addresses(nodes_payload: dict) -> list[str]:
    """`host:port` of every alive node's Prometheus endpoint, from the dashboard's node summary."""
    addresses = []
    for node in (nodes_payload.get("data") or {}).get("summary") or []:
        raylet = node.get("raylet") or {}
        if raylet.get("state") == "ALIVE" and raylet.get("metricsExportPort"):
            addresses.append(f"{raylet['nodeManagerAddress']}:{raylet['metricsExportPort']}")
    return addresses
