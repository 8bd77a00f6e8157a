"""Sites on Slurm, on a real (development) Slurm with the tiny vLLM model.

A standalone gateway fronts one Slurm site whose models run in Slurm jobs,
each a Ray cluster started inside its allocation by the batch template.
Nothing runs until asked: a request for a model that runs nowhere submits
one job, requests wait for the hold and then get 503 with Retry-After, and
the model answers once its job is ready. The hot-node keeper runs as
`first keeper run`, the way an operator starts it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types import Batch

from deployments.config_loading import load_config
from deployments.site_config import SiteConfig
from deployments.slurm import SiteJobs
from tests.conftest import ENDPOINT_VENV, HAPROXY
from tests.support.processes import FIRST, FirstProcess, start_standalone_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

SITE = "hpc"
COLD = "tiny-llama"  # vLLM, started on its first request
HOT = "tiny-hot"  # vLLM, kept by the keeper across its short wall time
DIES = "tiny-broken"  # its weights folder is missing: the job dies while starting
MISROUTED = "sim-misrouted"  # asks for a partition Slurm does not have
HOLD_S = 15
HOT_WALL_MIN = 8
HANDOVER_S = 360
START_TIMEOUT_S = 300
MESSAGES = [{"role": "user", "content": "Hello"}]


@dataclass
class SlurmGateway:
    url: str
    site_path: Path
    federation_path: Path
    workdir: Path

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", **kwargs)

    def model_state(self, model: str) -> dict:
        card = httpx.get(f"{self.url}/v1/models/{model}", timeout=10).raise_for_status().json()
        return card["sites"][0]

    def wait_for_state(self, model: str, states: set[str], timeout_s: float) -> dict:
        def reached() -> dict:
            placement = self.model_state(model)
            assert placement["state"] in states, f"{model} still {placement}"
            return placement

        what = f"{model} to be {' or '.join(sorted(states))}"
        return eventually(reached, timeout_s, what, interval_s=1.0, retry_on=(AssertionError,))

    def slurm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [FIRST, "slurm", *args[:1], "--config", str(self.site_path), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


def submitted_jobs(model: str) -> list[str]:
    """Every job Slurm has for the model, finished ones included (Slurm's own record)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name=first-{SITE}-{model}", "--format=%i"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return sorted(out.split(), key=int)


def slurm_site(model_dir: Path, state_dir: Path) -> dict:
    vllm = {
        "engine": "vllm",
        "source": str(model_dir),
        "engine_kwargs": {"dtype": "float32", "enforce_eager": True, "max_model_len": 256},
        # The dev Slurm has no CPU confinement (task/none), so vLLM's "auto" binding
        # pins every job's engine to core 0: a replacement loading beside a serving
        # job then took over 5 minutes, past the handover window.
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"},
        "resources": {"cpus": 1},
    }
    return {
        "name": SITE,
        "ray": {"haproxy": {"enabled": HAPROXY}},
        "slurm": {
            "partition": "debug",
            "cpus_per_node": 1,
            # The compute nodes' environment (vLLM's), not the endpoint's that submits.
            "python": sys.executable,
            "ray_cpus_per_node": 8,
            "time_limit": "30",
            "serve_host": "127.0.0.1",
            "handover_s": HANDOVER_S,
            "state_dir": str(state_dir),
        },
        "models": [
            {"id": COLD, **vllm, "autoscaling": "cold"},
            {"id": HOT, **vllm, "autoscaling": "hot", "slurm": {"time_limit": str(HOT_WALL_MIN)}},
            {"id": DIES, **vllm, "source": str(state_dir / "no-such-model"), "autoscaling": "cold"},
            {
                "id": MISROUTED,
                "engine": "simulated",
                "autoscaling": "cold",
                "slurm": {"partition": "no-such-partition"},
            },
        ],
    }


def start_slurm_gateway(workdir: Path, site: dict, **sections) -> tuple[FirstProcess, SlurmGateway]:
    """A standalone gateway in front of `site` alone, with `sections` of federation config."""
    site_path = workdir / "site.yaml"
    site_path.write_text(yaml.safe_dump(site))
    federation = {
        "auth": {"required": False},
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        **sections,
        "sites": [
            {
                "name": site["name"],
                "site": "site.yaml",
                # The site functions run as Globus Compute tasks in the endpoint's own
                # engine and environment, as at a real site (the gateway starts it).
                "channel": {
                    "kind": "endpoint-engine",
                    "python": str(ENDPOINT_VENV / "bin/python"),
                    "workers": 1,
                    "poll_interval_s": 1.0,
                },
            }
        ],
    }
    federation_path = workdir / "federation.yaml"
    process, url = start_standalone_gateway(federation, federation_path, "gateway")

    def site_up() -> bool:
        sites = httpx.get(f"{url}/health", timeout=10).json()["sites"]
        return all(site["health"] in ("up", "stale") for site in sites)

    # The endpoint starts with the first status call, and its workers' imports take
    # seconds of both cores: over before a test's job starts its Ray cluster beside them.
    eventually(site_up, 180, "the site's first status through its endpoint")
    return process, SlurmGateway(url, site_path, federation_path, workdir)


@pytest.fixture(scope="module")
def slurm_gateway(dev_slurm, tiny_model_dir, tmp_path_factory) -> Iterator[SlurmGateway]:
    workdir = tmp_path_factory.mktemp("slurm-gateway")
    process, gateway = start_slurm_gateway(
        workdir,
        slurm_site(tiny_model_dir, workdir / "slurm"),
        cold_start={"hold_s": HOLD_S, "expected_start_s": 60, "poll_interval_s": 0.5},
        keeper={"interval_s": 3, "drain_s": 5, "idle_window_s": 3600},
    )
    try:
        yield gateway
    finally:
        process.stop()
        for model in (COLD, HOT, DIES, MISROUTED):
            gateway.slurm("stop", model, check=False)


async def _cold_burst(url: str, count: int) -> list[tuple[int, str | None, str | None]]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

    async def one() -> tuple[int, str | None, str | None]:
        try:
            await client.chat.completions.create(model=COLD, messages=MESSAGES, max_tokens=4)
            return 200, None, None
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("retry-after"), exc.code

    try:
        return await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


def test_a_hundred_requests_for_a_cold_model_submit_one_job(slurm_gateway):
    assert slurm_gateway.model_state(COLD)["state"] == "stopped"
    started = time.monotonic()
    results = asyncio.run(_cold_burst(slurm_gateway.url, 100))
    waited = time.monotonic() - started

    assert submitted_jobs(COLD) and len(submitted_jobs(COLD)) == 1
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    for status, retry_after, code in results:
        if status == 503:
            assert code == "model_starting"
            assert int(retry_after) >= 1
    # Every request was answered: at the end of the hold at the latest.
    assert waited < HOLD_S + 30
    placement = slurm_gateway.model_state(COLD)
    assert placement["state"] in ("queued", "starting", "running")
    assert placement["jobs"] == 1

    slurm_gateway.wait_for_state(COLD, {"running"}, START_TIMEOUT_S)
    reply = slurm_gateway.client().chat.completions.with_raw_response.create(
        model=COLD, messages=MESSAGES, max_tokens=4
    )
    assert reply.headers["x-first-site"] == SITE
    assert reply.parse().choices[0].message.content
    assert len(submitted_jobs(COLD)) == 1


def test_scancel_stops_routing_and_the_next_request_starts_the_model_again(slurm_gateway):
    slurm_gateway.wait_for_state(COLD, {"running"}, START_TIMEOUT_S)
    (job,) = submitted_jobs(COLD)
    subprocess.run(["scancel", job], check=True, timeout=30)

    slurm_gateway.wait_for_state(COLD, {"stopped"}, 60)
    status = slurm_gateway.slurm("status", COLD).stdout
    assert job in status and ("cancelled" in status or "ended" in status)

    with pytest.raises(openai.APIStatusError) as refused:
        slurm_gateway.client().chat.completions.create(model=COLD, messages=MESSAGES, max_tokens=4)
    assert refused.value.status_code == 503 and refused.value.code == "model_starting"
    assert "starting on site" in refused.value.message
    jobs = submitted_jobs(COLD)
    assert len(jobs) == 2 and jobs[0] == job

    slurm_gateway.wait_for_state(COLD, {"running"}, START_TIMEOUT_S)
    # The SDK's own retries honour Retry-After; here the model is up already.
    answer = slurm_gateway.client().chat.completions.create(
        model=COLD, messages=MESSAGES, max_tokens=4
    )
    assert answer.choices[0].message.content
    slurm_gateway.slurm("stop", COLD)  # frees the CPU for the jobs of the next tests


def test_a_batch_for_a_stopped_model_starts_it_through_slurm_and_runs_in_its_job(slurm_gateway):
    slurm_gateway.wait_for_state(COLD, {"stopped"}, 60)
    jobs_before = submitted_jobs(COLD)
    client = slurm_gateway.client(timeout=60)
    lines = [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": COLD, "prompt": f"Number {i}", "max_tokens": 4},
            }
        )
        for i in range(20)
    ]
    source = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/completions", completion_window="24h"
    )

    def ended() -> Batch:
        current = client.batches.retrieve(batch.id)
        assert current.status in ("completed", "failed", "cancelled", "expired"), current
        return current

    what = f"batch {batch.id} to end"
    batch = eventually(ended, START_TIMEOUT_S, what, interval_s=1.0, retry_on=(AssertionError,))

    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 0)
    outputs = client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in outputs) == sorted(
        f"c{i}" for i in range(20)
    )
    # One job started the model; the batch ran in it as a Ray job.
    assert len(submitted_jobs(COLD)) == len(jobs_before) + 1
    slurm_gateway.slurm("stop", COLD)


def test_a_job_that_dies_while_starting_is_reported_with_its_log_and_not_retried_forever(
    slurm_gateway,
):
    client = slurm_gateway.client()
    messages = []
    deadline = time.monotonic() + 180
    while not any("no more are started" in m for m in messages):
        assert time.monotonic() < deadline, messages
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=DIES, messages=MESSAGES, max_tokens=4)
        assert refused.value.status_code == 503
        assert refused.value.code in ("model_starting", "model_start_failed")
        messages.append(refused.value.message)

    failures = [m for m in messages if "failed to start" in m]
    assert failures and all("no model at" in m for m in failures), messages
    assert len(submitted_jobs(DIES)) == 2  # max_failed_starts, then no more
    client.models.retrieve(DIES)  # still listed
    assert slurm_gateway.model_state(DIES)["state"] == "failed"
    status = slurm_gateway.slurm("status", DIES).stdout
    assert "failed" in status and "no model at" in status

    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=DIES, messages=MESSAGES, max_tokens=4)
    assert len(submitted_jobs(DIES)) == 2


def test_an_invalid_partition_is_a_clear_error_carrying_slurms_message(slurm_gateway):
    with pytest.raises(openai.APIStatusError) as refused:
        slurm_gateway.client().chat.completions.create(
            model=MISROUTED, messages=MESSAGES, max_tokens=4
        )
    assert refused.value.status_code == 503 and refused.value.code == "model_start_failed"
    assert "invalid partition" in refused.value.message.lower()

    launched = slurm_gateway.slurm("launch", MISROUTED, check=False)
    assert launched.returncode == 1
    (line,) = launched.stderr.strip().splitlines()
    assert line.startswith("Error: sbatch failed") and "invalid partition" in line.lower()
    assert submitted_jobs(MISROUTED) == []


def test_a_machine_without_sbatch_gives_a_clear_error_at_launch(slurm_gateway):
    done = subprocess.run(
        [FIRST, "slurm", "launch", "--config", str(slurm_gateway.site_path), COLD],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/nonexistent", "HOME": str(slurm_gateway.workdir)},
        check=False,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: `") and "` not found" in line
    assert "no Slurm client on PATH" in line


def test_the_keeper_hands_a_hot_model_over_before_its_wall_time_without_a_failed_request(
    slurm_gateway,
):
    keeper = FirstProcess.start(
        ["keeper", "run", "--config", str(slurm_gateway.federation_path)],
        slurm_gateway.workdir,
        "keeper",
    )
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def send_requests() -> None:
        client = slurm_gateway.client(timeout=120)
        while not stop.is_set():
            try:
                client.chat.completions.create(model=HOT, messages=MESSAGES, max_tokens=4)
                outcomes["ok"] += 1
            except openai.APIError as exc:
                outcomes[f"{type(exc).__name__}: {exc}"[:200]] += 1
            # A steady client, not a load test: on 2 cores the replacement loads meanwhile.
            time.sleep(1.0)

    sender = threading.Thread(target=send_requests, daemon=True)
    try:
        # The keeper starts the hot model on its own (its minimum is one allocation).
        slurm_gateway.wait_for_state(HOT, {"running"}, START_TIMEOUT_S)
        first = submitted_jobs(HOT)[0]
        sender.start()

        # Before the first job's wall time ends, a second one takes over and the
        # first is released.
        def handed_over() -> dict[str, str]:
            jobs = _job_states(slurm_gateway, HOT)
            assert jobs.get(first) in ("cancelled", "ended") and "running" in jobs.values(), jobs
            return jobs

        eventually(
            handed_over,
            HOT_WALL_MIN * 60 + 60,
            f"job {first} released and a replacement running",
            interval_s=2,
            retry_on=(AssertionError,),
        )
        time.sleep(5)  # requests keep going to the replacement
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=130)
        keeper.stop(grace_s=10)
        # The hot model's jobs hold the dev Slurm's CPUs; the next tests need them.
        slurm_gateway.slurm("stop", HOT)
    log = keeper.log_path.read_text()
    assert "(handover:" in log and "(superseded:" in log, log[-3000:]
    assert outcomes["ok"] > 30
    assert set(outcomes) == {"ok"}, outcomes


def _job_states(gateway: SlurmGateway, model: str) -> dict[str, str]:
    """The model's jobs as the site status function sees them, read in this process
    (a `first` process every poll would cost the loading job a core)."""
    site = load_config(gateway.site_path, SiteConfig)
    return {job.job_id: job.state for job in SiteJobs(site).jobs(model)}


def test_the_keeper_inside_the_gateway_starts_a_hot_model_before_any_request(dev_slurm, tmp_path):
    """keeper.in_gateway: no `first keeper run`; the gateway itself keeps the hot model."""
    site = {
        "name": "kept",
        "slurm": {
            "cpus_per_node": 1,
            "ray_cpus_per_node": 8,
            "python": sys.executable,
            "time_limit": "10",
            "serve_host": "127.0.0.1",
            "state_dir": str(tmp_path / "slurm"),
        },
        "models": [{"id": "sim-hot", "engine": "simulated", "autoscaling": "hot"}],
    }
    process, gateway = start_slurm_gateway(
        tmp_path, site, keeper={"in_gateway": True, "interval_s": 2}
    )
    try:
        gateway.wait_for_state("sim-hot", {"running"}, START_TIMEOUT_S)
        answer = gateway.client().chat.completions.create(
            model="sim-hot", messages=MESSAGES, max_tokens=4
        )
        assert answer.choices[0].message.content
    finally:
        process.stop()
        gateway.slurm("stop", "sim-hot", check=False)
    assert "launch sim-hot at kept (minimum:" in process.log_path.read_text()
