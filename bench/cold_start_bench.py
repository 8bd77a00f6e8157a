"""Cold start on Slurm: request to first token for a model that runs nowhere, and after.

Starts its own development Slurm (scripts/dev-slurm.sh, in a temporary
folder), writes copies of cluster_configs/local-slurm.yaml and
local-slurm-federation.yaml there (private Slurm state folder and store, no
limits, `cold_start.hold_s: 300`, a free gateway port), starts the
standalone gateway with an API key, and then, N times for tiny-llama (vLLM):

- makes sure no job of the model is queued or running;
- sends one streamed chat completion (the official `openai` client,
  `max_tokens` 16): the gateway submits a Slurm job and holds the request
  until the model answers. Measured: request to first token (client side),
  split with the job's events into gateway-to-sbatch, queue wait (started -
  submitted), Ray start (ray_up - started), model load (ready - ray_up) and
  the rest (ready to first token: the gateway noticing, forwarding, the
  first token);
- sends 20 sequential streamed requests to the now-running model: hot
  (requests 1-10, right after it came up) against steady state (11-20);
- `first slurm stop`s the model and waits until its job has left the queue
  and every process of the job is gone.

    python -m bench.cold_start_bench --out bench/results/cold_start.json [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml
from openai import OpenAI

from serve_app.store import new_api_key
from tests.support.processes import FIRST, start_standalone_gateway
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
DEV_SLURM = REPO / "scripts" / "dev-slurm.sh"
SITE_YAML = REPO / "cluster_configs" / "local-slurm.yaml"
FEDERATION_YAML = REPO / "cluster_configs" / "local-slurm-federation.yaml"
TINY_MODEL = REPO / ".first" / "models" / "tiny-llama"
MODEL = "tiny-llama"
MAX_TOKENS = 16
HOT_REQUESTS = 20
HOLD_S = 300.0
ACTIVE_STATES = {"queued", "starting", "running"}
# Slurm states of a job that still holds its allocation (COMPLETING: processes still exiting).
SLURM_BUSY = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}
TARGET_COLD_S = 60.0
TARGET_HOT_RATIO = 1.10
MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]


def progress(message: str) -> None:
    print(f"[cold-start] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# -- the development Slurm and the configs ------------------------------------


def start_dev_slurm(root: Path) -> str:
    """Start a private Slurm in `root`; its SLURM_CONF."""
    done = subprocess.run(
        [str(DEV_SLURM), "start", str(root)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"dev Slurm did not start:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("SLURM_CONF="))
    return line.split("=", 1)[1].strip()


def stop_dev_slurm(root: Path) -> None:
    subprocess.run([str(DEV_SLURM), "stop", str(root)], timeout=120, check=False)


def write_configs(workdir: Path) -> tuple[Path, dict]:
    """The bench's copies of the Slurm site and its federation: (site file, federation
    config; `start_standalone_gateway` picks its port)."""
    site = yaml.safe_load(SITE_YAML.read_text())
    site["slurm"]["state_dir"] = str(workdir / "slurm-state")
    for model in site["models"]:
        if model["id"] == MODEL:
            model["source"] = str(TINY_MODEL.resolve())
    federation = yaml.safe_load(FEDERATION_YAML.read_text())
    federation["limits"] = None
    federation.setdefault("cold_start", {})["hold_s"] = HOLD_S
    federation["store"] = {"kind": "sqlite", "path": str(workdir / "first.db")}
    (site_path := workdir / "local-slurm.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    for entry in federation["sites"]:
        entry["site"] = site_path.name
    return site_path, federation


# -- the model's jobs -----------------------------------------------------------


def first_cmd(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [FIRST, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`first {' '.join(args)}` failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def model_jobs(site_path: Path, env: dict[str, str]) -> list[dict]:
    """The model's jobs as `first slurm status --json` reports them."""
    out = first_cmd("slurm", "status", "--config", str(site_path), "--json", MODEL, env=env)
    models = json.loads(out)["models"]
    return next((m["jobs"] for m in models if m["id"] == MODEL), [])


def slurm_states(job_ids: list[str], env: dict[str, str]) -> dict[str, str]:
    """Slurm's own state of each job it still lists (squeue -t all)."""
    if not job_ids:
        return {}
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


def job_processes(job_id: str, slurm_conf: str) -> list[psutil.Process]:
    """Processes started inside one of our jobs (they carry its SLURM_JOB_ID and our SLURM_CONF)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            environ = process.environ()
            if environ.get("SLURM_JOB_ID") == job_id and environ.get("SLURM_CONF") == slurm_conf:
                found.append(process)
    return found


def stop_model(
    site_path: Path, env: dict[str, str], slurm_conf: str, timeout_s: float = 180
) -> dict:
    """`first slurm stop` the model; wait until its jobs have left the queue and their processes."""
    jobs = [j["job_id"] for j in model_jobs(site_path, env) if j["state"] in ACTIVE_STATES]
    if not jobs:
        return {"jobs": [], "left_queue_s": 0.0, "processes_gone_s": 0.0, "leftover_processes": []}
    progress(f"first slurm stop {MODEL} (jobs {', '.join(jobs)})")
    started = time.monotonic()
    first_cmd("slurm", "stop", "--config", str(site_path), MODEL, env=env)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        reported = {j["job_id"]: j["state"] for j in model_jobs(site_path, env)}
        states = slurm_states(jobs, env)
        if not any(reported.get(j) in ACTIVE_STATES for j in jobs) and not any(
            states.get(j) in SLURM_BUSY for j in jobs
        ):
            break
        time.sleep(1.0)
    else:
        raise RuntimeError(f"jobs {jobs} still in the queue {timeout_s:.0f} s after the stop")
    left_queue_s = time.monotonic() - started
    # Slurm forgets a job once its batch script exits; what the script started may outlive it.
    leftovers: list[psutil.Process] = []
    while time.monotonic() < deadline:
        leftovers = [p for j in jobs for p in job_processes(j, slurm_conf)]
        if not leftovers:
            break
        time.sleep(1.0)
    described = []
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
    if described:
        progress(f"{len(described)} processes of jobs {jobs} outlived them: {described[:3]}")
    return {
        "jobs": jobs,
        "left_queue_s": round(left_queue_s, 1),
        "processes_gone_s": None if described else round(time.monotonic() - started, 1),
        "leftover_processes": described,
    }


def wait_for_fresh_report(gateway_url: str, key: str, since_wall: float, timeout_s=60) -> None:
    """Until the gateway holds a status report of the site collected after `since_wall`."""
    headers = {"Authorization": f"Bearer {key}"}

    def fresh() -> bool:
        report = httpx.get(f"{gateway_url}/health", headers=headers, timeout=10).json()
        site = report["sites"][0]
        age = site["report_age_s"]
        return site["health"] == "up" and age is not None and age < time.time() - since_wall

    try:
        eventually(
            fresh,
            timeout_s,
            "a fresh status report in the gateway",
            interval_s=0.5,
            retry_on=(httpx.HTTPError, ValueError, KeyError),
        )
    except AssertionError as exc:
        raise RuntimeError(f"the gateway got no fresh status report within {timeout_s} s") from exc


def ray_temp_of(job_id: str) -> Path:
    """The job's Ray temp folder (RAY_TMP in cluster_configs/slurm/ray-site.sbatch.j2)."""
    return Path(f"/tmp/first-ray-{job_id}")


def _log_time(line: str) -> float | None:
    match = re.match(r"\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
    if match is None:
        return None
    stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp()
    return stamp + int(match[2]) / 1000


def serve_timeline(job_id: str, ray_up_at: float, ready_at: float) -> dict | None:
    """Model load (ray_up to ready) split with the job's Serve controller log; None if unread.

    - serve_start: ray_up to the model's deployment (Serve controller and proxy start);
    - replica_process: the replica's worker process starting and importing (Ray's
      "started after X s" minus the constructor's "took Y s");
    - engine_init: the replica's constructor (vLLM engine) and first health check;
    - first_answer: replica up to the job's ready event (the job's own one-token
      completion, polled every second).
    """
    logs = sorted((ray_temp_of(job_id) / "session_latest/logs/serve").glob("controller_*.log"))
    if not logs:
        return None
    deployed = started = None
    after_s = init_s = None
    for line in logs[0].read_text(errors="replace").splitlines():
        if deployed is None and "Deploying new version of Deployment(name='LLMServer:" in line:
            deployed = _log_time(line)
        match = re.search(
            r"deployment='LLMServer:[^']*'.*started successfully.* after ([\d.]+)s.* took ([\d.]+)s",
            line,
        )
        if match and started is None:
            started, after_s, init_s = _log_time(line), float(match[1]), float(match[2])
    if None in (deployed, started, after_s, init_s):
        return None
    return {
        "serve_start_s": round(deployed - ray_up_at, 2),
        "replica_process_s": round(after_s - init_s, 2),
        "engine_init_s": round(init_s, 2),
        "first_answer_s": round(ready_at - started, 2),
    }


def status_call_s(site_path: Path, calls: int = 3) -> float:
    """Median duration of the site status function (what the gateway's poller calls)."""
    from deployments.config_loading import load_config
    from deployments.site_config import SiteConfig
    from deployments.site_functions import site_status

    site = load_config(site_path, SiteConfig).model_dump()
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        site_status(site)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


# -- requests -------------------------------------------------------------------


def streamed_chat(client: OpenAI) -> dict:
    """One streamed chat completion: wall start, time to first content token, total."""
    started_wall, started = time.time(), time.perf_counter()
    first_chunk = first_token = None
    text, chunks = "", 0
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
    )
    for chunk in stream:
        now = time.perf_counter()
        chunks += 1
        if first_chunk is None:
            first_chunk = now
        for choice in chunk.choices:
            piece = choice.delta.content if choice.delta else None
            if piece or choice.finish_reason:
                # The first chunk carrying text; a finish without any text also ends the wait.
                if first_token is None:
                    first_token = now
                text += piece or ""
    ended = time.perf_counter()
    if first_token is None:
        raise RuntimeError("the stream ended without a token")
    return {
        "started_at": started_wall,
        "first_chunk_s": first_chunk - started,
        "first_token_s": first_token - started,
        "first_token_at": started_wall + (first_token - started),
        "total_s": ended - started,
        "chunks": chunks,
        "text": text,
    }


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class Bench:
    """What every run uses: the client, the gateway, the site file, our Slurm."""

    client: OpenAI
    gateway_url: str
    key: str
    site_path: Path
    env: dict[str, str]
    slurm_conf: str


def one_run(index: int, bench: Bench) -> dict:
    client, site_path, env, slurm_conf = bench.client, bench.site_path, bench.env, bench.slurm_conf
    # No job of the model may be queued or running, and the gateway must know it.
    stop_model(site_path, env, slurm_conf)
    wait_for_fresh_report(bench.gateway_url, bench.key, time.time())
    load = os.getloadavg()
    progress(f"run {index}: cold request (load average {load[0]:.2f})")
    cold = streamed_chat(client)
    progress(
        f"run {index}: first token after {cold['first_token_s']:.1f} s "
        f"({cold['chunks']} chunks, {cold['total_s']:.1f} s in all)"
    )
    new_jobs = [
        j
        for j in model_jobs(site_path, env)
        if j["submitted_at"] is not None and j["submitted_at"] >= cold["started_at"] - 1.0
    ]
    if len(new_jobs) != 1:
        raise RuntimeError(f"expected one new job for the cold request, found {new_jobs}")
    job = new_jobs[0]
    missing = [f for f in ("submitted_at", "started_at", "ray_up_at", "ready_at") if not job[f]]
    if missing:
        raise RuntimeError(f"job {job['job_id']} has no {', '.join(missing)}: {job}")
    split = {
        "request_to_submitted_s": job["submitted_at"] - cold["started_at"],
        "queue_wait_s": job["started_at"] - job["submitted_at"],
        "ray_start_s": job["ray_up_at"] - job["started_at"],
        "model_load_s": job["ready_at"] - job["ray_up_at"],
        "ready_to_first_token_s": cold["first_token_at"] - job["ready_at"],
    }
    progress(
        f"run {index}: job {job['job_id']}: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in split.items())
    )

    load_split = serve_timeline(job["job_id"], job["ray_up_at"], job["ready_at"])
    if load_split:
        progress(
            f"run {index}: model load: "
            + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in load_split.items())
        )
    processes = len(job_processes(job["job_id"], slurm_conf))
    status_s = status_call_s(site_path)
    progress(f"run {index}: {processes} processes in the job; one status call {status_s:.2f} s")

    progress(f"run {index}: {HOT_REQUESTS} sequential streamed requests on the running model")
    hot = [streamed_chat(client)["first_token_s"] for _ in range(HOT_REQUESTS)]
    hot_median = statistics.median(hot[:10])
    steady_median = statistics.median(hot[10:])
    ratio = hot_median / steady_median
    progress(
        f"run {index}: first token hot (1-10) {ms(hot_median)} ms, steady (11-20) "
        f"{ms(steady_median)} ms, ratio {ratio:.3f}; all 20: median "
        f"{ms(statistics.median(hot))} ms, p90 {ms(p90(hot))} ms"
    )
    after = stop_model(site_path, env, slurm_conf)
    # The batch script leaves its Ray temp folder behind; noted, then removed (it is ours).
    ray_temp = ray_temp_of(job["job_id"])
    after["ray_temp_left_behind"] = ray_temp.exists()
    shutil.rmtree(ray_temp, ignore_errors=True)
    progress(
        f"run {index}: job left the queue {after['left_queue_s']} s after the stop; "
        f"leftover processes: {len(after['leftover_processes'])}"
    )
    return {
        "run": index,
        "job_id": job["job_id"],
        "load_average_1m_before": round(load[0], 2),
        "cold": {
            "request_to_first_token_s": round(cold["first_token_s"], 2),
            "request_to_first_chunk_s": round(cold["first_chunk_s"], 2),
            "request_to_last_chunk_s": round(cold["total_s"], 2),
            **{k: round(v, 2) for k, v in split.items()},
            "model_load_split": load_split,
            "site_status_call_s": round(status_s, 2),
            "job_processes": processes,
        },
        "running_model": {
            "first_token_ms": [ms(v) for v in hot],
            "median_ms": ms(statistics.median(hot)),
            "p90_ms": ms(p90(hot)),
            "hot_1_10_median_ms": ms(hot_median),
            "steady_11_20_median_ms": ms(steady_median),
            "hot_over_steady": round(ratio, 3),
            "cold_over_steady": round(cold["first_token_s"] / steady_median, 1),
        },
        "stop": after,
    }


def summarize(runs: list[dict]) -> dict:
    def median_of(section: str, field: str) -> float:
        return statistics.median(run[section][field] for run in runs)

    numbers = [f for f, v in runs[0]["cold"].items() if isinstance(v, int | float)]
    cold = {field: round(median_of("cold", field), 2) for field in numbers}
    splits = [run["cold"]["model_load_split"] for run in runs]
    if all(splits):
        cold["model_load_split"] = {
            field: round(statistics.median(split[field] for split in splits), 2)
            for field in splits[0]
        }
    hot = {
        field: round(median_of("running_model", field), 3 if field.endswith("steady") else 1)
        for field in (
            "median_ms",
            "p90_ms",
            "hot_1_10_median_ms",
            "steady_11_20_median_ms",
            "hot_over_steady",
            "cold_over_steady",
        )
    }
    cold_s = cold["request_to_first_token_s"]
    return {
        "runs": len(runs),
        "cold_median": cold,
        "running_model_median": hot,
        "targets": {
            "cold_start_under_60s": {
                "target_s": TARGET_COLD_S,
                "median_s": cold_s,
                "worst_s": max(r["cold"]["request_to_first_token_s"] for r in runs),
                "met": cold_s < TARGET_COLD_S,
                "met_every_run": all(
                    r["cold"]["request_to_first_token_s"] < TARGET_COLD_S for r in runs
                ),
            },
            "hot_within_10pct_of_steady": {
                "definition": "median first token of requests 1-10 right after the model came "
                "up, over that of requests 11-20 (steady state)",
                "target_ratio": TARGET_HOT_RATIO,
                "median_ratio": hot["hot_over_steady"],
                "met": hot["hot_over_steady"] <= TARGET_HOT_RATIO,
                "met_every_run": all(
                    r["running_model"]["hot_over_steady"] <= TARGET_HOT_RATIO for r in runs
                ),
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/cold_start.json"))
    parser.add_argument("--runs", type=int, default=3, help="Cold starts of tiny-llama.")
    args = parser.parse_args()
    if not (TINY_MODEL / "config.json").exists():
        raise SystemExit(f"{TINY_MODEL} is missing: run `make {TINY_MODEL.relative_to(REPO)}`")
    out = args.out.resolve()
    os.chdir(REPO)  # the jobs run from the gateway's working directory (sbatch --chdir)
    date = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()

    workdir = Path(tempfile.mkdtemp(prefix="first-coldbench-", dir="/tmp"))
    workdir.chmod(0o755)  # munged (its own user) must reach the Slurm folder inside
    slurm_root = workdir / "slurm"
    gateway = None
    runs: list[dict] = []
    finished = False
    try:
        progress(f"starting a development Slurm in {slurm_root}")
        slurm_conf = start_dev_slurm(slurm_root)
        os.environ["SLURM_CONF"] = slurm_conf  # for the Slurm commands run from here too
        env = dict(os.environ)
        key = new_api_key()
        site_path, federation = write_configs(workdir)
        fed_path = workdir / "local-slurm-federation.yaml"
        progress(f"starting the standalone gateway ({fed_path})")
        gateway, url = start_standalone_gateway(
            federation,
            fed_path,
            "gateway",
            args=("--with-key", "bench"),
            env={"SLURM_CONF": slurm_conf, "FIRST_API_KEY": key},
            timeout_s=120,
        )
        progress(f"gateway ready at {url}")
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=HOLD_S + 120)
        bench = Bench(client, url, key, site_path, env, slurm_conf)
        for index in range(1, args.runs + 1):
            runs.append(one_run(index, bench))
        finished = True
    finally:
        if gateway is not None:
            progress("stopping the gateway")
            gateway.stop()
        progress("stopping the development Slurm")
        stop_dev_slurm(slurm_root)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"kept {workdir} (gateway log, job logs) for a look")

    memory = psutil.virtual_memory().total
    report = {
        "what": "cold start of tiny-llama (vLLM, CPU) in a Slurm job of the development Slurm, "
        "through the standalone gateway: request to first token, split by the job's events; "
        f"then {HOT_REQUESTS} sequential streamed requests on the running model",
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "description": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{memory / 2**30:.0f} GiB, Python {platform.python_version()}",
            "cpus": os.cpu_count(),
            "memory_gib": round(memory / 2**30, 1),
            "load_average_1m_at_start": round(load_start[0], 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "setup": {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "streamed": True,
            "client": "openai (official Python client), max_retries 0",
            "cold_start_hold_s": HOLD_S,
            "slurm": "scripts/dev-slurm.sh, one node, cpus_per_node 1 per job",
        },
        "summary": summarize(runs),
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
