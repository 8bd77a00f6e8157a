"""Every Prometheus metric of the gateway, and the recorder that the code calls.

Names follow Prometheus's conventions: the `first_` prefix, units in the
name, counters ending in `_total`. Labels take few values: model (only the
models the federation serves; anything a client makes up is `other`), site,
route (an API path template), status (the HTTP code), a reason from a fixed
list. Never a user, key or request id: those belong in the usage ledger.

Under Ray Serve several processes serve the gateway (its autoscaled ingress
replicas, the keeper), and a scrape reaches any one of them. So there each
process writes its samples to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client's multiprocess mode, set for those deployments in
serve_app/ingress.py) and whichever replica answers `/metrics` adds them
up. Standalone, the one process answers from its own registry.

Gauges that each replica sets from the same site reports (site up, circuit
state, Slurm jobs, batches) are read as the largest value of the live
processes; in-flight requests are summed.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

from deployments.site_status import SiteStatus
from serve_app.config import FederationConfig
from serve_app.usage.metering import Meter

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"  # the label value of a model or route the gateway does not know
NO_SITE = "none"  # requests refused before any site was chosen
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}

# A replica on another node than the one `first gateway up` prepared the folder
# on: prometheus_client opens its files there as soon as a metric is made.
if _samples_dir := os.environ.get(MULTIPROCESS_DIR_VARIABLE):
    os.makedirs(_samples_dir, exist_ok=True)

# Latency buckets from a streamed token (ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "first_requests",
    "Inference requests answered by the gateway, by model, site, route and HTTP status.",
    ["model", "site", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "first_request_duration_seconds",
    "Time from a request's arrival to the end of its answer (streams: the last event).",
    ["model", "route"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "first_time_to_first_token_seconds",
    "Time from a streamed request's arrival to the first event of its answer.",
    ["model", "site"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "first_tokens",
    "Tokens of answered requests, by model, site and kind (prompt, completion).",
    ["model", "site", "kind"],
)
IN_FLIGHT = Gauge(
    "first_site_requests_in_flight",
    "Requests the gateway has open at each site.",
    ["site"],
    multiprocess_mode="livesum",
)
RETRIES = Counter(
    "first_site_retries",
    "Sites that failed a request before answering, so the next site was tried, by reason.",
    ["site", "reason"],
)
FAILOVERS = Counter(
    "first_failovers",
    "Requests answered by another site than placement's first choice.",
    ["model", "site"],
)
PLACEMENTS = Counter(
    "first_placements",
    "Placement decisions: the site chosen first for a request.",
    ["model", "site"],
)
SITE_UP = Gauge(
    "first_site_up",
    "1 while the site answers its status calls (up or stale), 0 when unknown or down.",
    ["site"],
    multiprocess_mode="livemax",
)
CIRCUIT_STATE = Gauge(
    "first_site_circuit_state",
    "The site's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["site"],
    multiprocess_mode="livemax",
)
MODEL_REPLICAS = Gauge(
    "first_model_replicas",
    "Replicas of each model at each site, as the site reports them, by state.",
    ["site", "model", "state"],
    multiprocess_mode="livemax",
)
MODEL_HOT = Gauge(
    "first_model_hot",
    "1 for each model configured hot at a site: it should always have a replica.",
    ["site", "model"],
    multiprocess_mode="livemax",
)
TTFT_OBJECTIVE = Gauge(
    "first_time_to_first_token_objective_seconds",
    "The configured objective for p99 time to first token (metrics.ttft_objective_s).",
    multiprocess_mode="livemax",
)
MODEL_QUEUED = Gauge(
    "first_model_queued_requests",
    "Requests waiting in Serve for a replica of the model, as the site reports them.",
    ["site", "model"],
    multiprocess_mode="livemax",
)
COLD_STARTS = Counter(
    "first_cold_starts",
    "Slurm jobs the gateway submitted to start a model that ran nowhere, by outcome.",
    ["model", "site", "outcome"],
)
SLURM_JOBS = Gauge(
    "first_slurm_jobs",
    "Slurm jobs (allocations) of each model at each site, by state: queued, starting, "
    "running, failed. Running jobs summed over time are allocation hours.",
    ["site", "model", "state"],
    multiprocess_mode="livemax",
)
AUTH_FAILURES = Counter(
    "first_auth_failures",
    "Requests refused for their credential (401), the policy (403), or Globus Auth down (503).",
    ["code"],
)
RATE_LIMITED = Counter(
    "first_rate_limit_rejections", "Requests refused with 429 by a rate limit.", ["route"]
)
KEEPER_DECISIONS = Counter(
    "first_keeper_decisions",
    "Decisions of the hot-node keeper, by site, model, action and reason.",
    ["site", "model", "action", "reason"],
)
BATCHES = Gauge(
    "first_batches",
    "Batches in the store, by state.",
    ["state"],
    multiprocess_mode="livemax",
)
BATCH_REQUESTS = Counter(
    "first_batch_requests",
    "Batch input lines with a stored result, by model and outcome (succeeded, failed).",
    ["model", "outcome"],
)
JOB_STATES = ("queued", "starting", "running", "failed")
BATCH_STATES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
    "expired",
)


class GatewayMetrics:
    """What the gateway records, behind methods, so label values stay bounded in one place.

    Built once per process from the config; with `enabled` false every method
    returns at once (the benchmark's "metrics off").
    """

    @classmethod
    def from_config(cls, config: FederationConfig) -> GatewayMetrics:
        """The recorder for a federation: its models, and what its config promises."""
        models = [(site.name, m) for site in config.sites for m in site.site_config.models]
        metrics = cls({model.id for _, model in models}, config.metrics.enabled)
        hot = [(site, model.id) for site, model in models if model.autoscaling.preset == "hot"]
        metrics.declare(hot, config.metrics.ttft_objective_s)
        return metrics

    def __init__(self, models: set[str], enabled: bool = True):
        self.models = frozenset(models)
        self.enabled = enabled
        # `labels()` costs more than the increment itself; label values are bounded,
        # so the children every request touches are kept here.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def declare(self, hot: list[tuple[str, str]], ttft_objective_s: float) -> None:
        """What the config promises, for the alerts to hold the sites to."""
        if not self.enabled:
            return
        TTFT_OBJECTIVE.set(ttft_objective_s)
        for site, model in hot:
            MODEL_HOT.labels(site, model).set(1)

    def model_label(self, model: str) -> str:
        return model if model in self.models else OTHER

    def request_done(self, meter: Meter, route: str, started: float) -> None:
        """One answered (or refused) inference request; `started` is its monotonic arrival."""
        if not self.enabled:
            return
        model = self.model_label(meter.model)
        site = meter.site or NO_SITE
        self._child(REQUESTS, model, site, route, str(meter.status)).inc()
        self._child(REQUEST_DURATION, model, route).observe(time.monotonic() - started)
        if meter.first_byte_at is not None and meter.site is not None:
            self._child(TIME_TO_FIRST_TOKEN, model, site).observe(meter.first_byte_at - started)
        if meter.prompt_tokens:
            self._child(TOKENS, model, site, "prompt").inc(meter.prompt_tokens)
        if meter.completion_tokens:
            self._child(TOKENS, model, site, "completion").inc(meter.completion_tokens)

    def in_flight(self, site: str, change: int) -> None:
        if self.enabled:
            self._child(IN_FLIGHT, site).inc(change)

    def placed(self, model: str, order: list[str]) -> None:
        if self.enabled and order:
            self._child(PLACEMENTS, self.model_label(model), order[0]).inc()

    def retry(self, site: str, reason: str) -> None:
        if self.enabled:
            RETRIES.labels(site, reason).inc()

    def failover(self, model: str, site: str) -> None:
        if self.enabled:
            FAILOVERS.labels(self.model_label(model), site).inc()

    def cold_start(self, model: str, site: str, outcome: str) -> None:
        if self.enabled:
            COLD_STARTS.labels(self.model_label(model), site, outcome).inc()

    def refused(self, status: int, code: str | None, route: str) -> None:
        """A request the gateway itself refused: count the ones that mean auth or limits."""
        if not self.enabled:
            return
        if status in (401, 403) or code == "auth_unavailable":
            AUTH_FAILURES.labels(code or str(status)).inc()
        elif status == 429:
            RATE_LIMITED.labels(route).inc()

    def site_report(
        self, site: str, up: bool, circuit: str, status: SiteStatus | None, slurm: bool
    ) -> None:
        """The gauges that follow a site's status reports."""
        if not self.enabled:
            return
        SITE_UP.labels(site).set(1 if up else 0)
        CIRCUIT_STATE.labels(site).set(CIRCUIT_STATES[circuit])
        for model in status.models if status is not None else []:
            MODEL_REPLICAS.labels(site, model.id, "running").set(model.replicas_running)
            MODEL_REPLICAS.labels(site, model.id, "starting").set(model.replicas_starting)
            MODEL_REPLICAS.labels(site, model.id, "target").set(model.replicas_target)
            MODEL_QUEUED.labels(site, model.id).set(model.queued_requests)
            if slurm:
                jobs = collections.Counter(job.state for job in model.jobs)
                for state in JOB_STATES:
                    SLURM_JOBS.labels(site, model.id, state).set(jobs[state])

    def batches(self, counts: dict[str, int]) -> None:
        if self.enabled:
            for state in BATCH_STATES:
                BATCHES.labels(state).set(counts.get(state, 0))

    def batch_results(self, model: str, succeeded: int, failed: int) -> None:
        if not self.enabled:
            return
        model = self.model_label(model)
        if succeeded:
            BATCH_REQUESTS.labels(model, "succeeded").inc(succeeded)
        if failed:
            BATCH_REQUESTS.labels(model, "failed").inc(failed)


def keeper_decision(site: str, model: str, action: str, reason: str) -> None:
    KEEPER_DECISIONS.labels(site, model, action, reason).inc()


def multiprocess_directory(config: FederationConfig) -> Path:
    chosen = config.metrics.multiprocess_dir
    default = Path(tempfile.gettempdir()) / f"first-metrics-{config.gateway.port}"
    return Path(chosen) if chosen else default


def serve_environment(config: FederationConfig) -> dict[str, str]:
    """Environment of the gateway's Serve processes: where their samples go."""
    if not config.metrics.enabled:
        return {}
    return {MULTIPROCESS_DIR_VARIABLE: str(multiprocess_directory(config))}


def empty_multiprocess_directory(config: FederationConfig) -> None:
    """A new deployment starts counting from zero (Prometheus reads it as a counter reset)."""
    directory = multiprocess_directory(config)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets: every live process's samples under Serve, this one's otherwise."""
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_dead_processes() -> None:
    """Drop the live gauges of processes that are gone (a replica that crashed).

    Serve restarts a replica with a new process id; the old one's files would
    otherwise keep its in-flight count and site gauges forever.
    """
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if not directory or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        pid = name.rsplit("_", 1)[-1].removesuffix(".db")
        if name.startswith("gauge_live") and pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), directory)


def process_ended() -> None:
    """This process stops serving: its live gauges (in-flight requests) go with it."""
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if directory and os.path.isdir(directory):
        multiprocess.mark_process_dead(os.getpid(), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
