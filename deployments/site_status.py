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

ModelState = Literal["running", "starting", "scaled_to_zero", "unhealthy", "not_deployed"]

STARTING_REPLICA_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING"})
# Serve gauges: requests inside a replica, and requests waiting at a handle.
ONGOING_METRIC = "ray_serve_replica_processing_queries"
QUEUED_METRIC = "ray_serve_deployment_queued_queries"


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


class SiteStatus(BaseModel):
    site: str
    reachable: bool
    error: str | None = None
    collected_at: float = Field(description="Unix time the status was read.")
    base_url: str
    app_status: str | None = None
    models: list[ModelStatus] = Field(default_factory=list)


class ReplicaCounts(BaseModel):
    running: int = 0
    starting: int = 0
    target: int = 0
    healthy: bool = True


def parse_serve_applications(
    payload: dict, app_name: str
) -> tuple[str | None, dict[str, ReplicaCounts]]:
    """Application status and replica counts per deployment, from `/api/serve/applications/`."""
    app = (payload.get("applications") or {}).get(app_name)
    if app is None:
        return None, {}
    counts: dict[str, ReplicaCounts] = {}
    for name, deployment in (app.get("deployments") or {}).items():
        states = [replica.get("state") for replica in deployment.get("replicas") or []]
        counts[name] = ReplicaCounts(
            running=states.count("RUNNING"),
            starting=sum(state in STARTING_REPLICA_STATES for state in states),
            target=deployment.get("target_num_replicas") or 0,
            healthy=deployment.get("status") in ("HEALTHY", "UPSCALING", "DOWNSCALING"),
        )
    return app.get("status"), counts


def parse_serve_load(metrics_texts: list[str], app_name: str) -> dict[str, tuple[float, float]]:
    """(ongoing, queued) per deployment, summed over replicas, handles and nodes."""
    load: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for text in metrics_texts:
        for family in text_string_to_metric_families(_serve_load_lines(text)):
            if family.name not in (ONGOING_METRIC, QUEUED_METRIC):
                continue
            slot = 0 if family.name == ONGOING_METRIC else 1
            for sample in family.samples:
                if sample.labels.get("application") == app_name:
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


def alive_node_metrics_addresses(nodes_payload: dict) -> list[str]:
    """`host:port` of every alive node's Prometheus endpoint, from the dashboard's node summary."""
    addresses = []
    for node in (nodes_payload.get("data") or {}).get("summary") or []:
        raylet = node.get("raylet") or {}
        if raylet.get("state") == "ALIVE" and raylet.get("metricsExportPort"):
            addresses.append(f"{raylet['nodeManagerAddress']}:{raylet['metricsExportPort']}")
    return addresses
