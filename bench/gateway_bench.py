"""Gateway benchmark: what the gateway adds to a request, next to calling the site directly.

Same run, same load tool (wrk, one connection per concurrent request), the
same non-streaming chat request (16 tokens) on every path:

- `direct`: straight to the backend;
- `gateway-serve`: the gateway hosted on Ray Serve (`first gateway up`, one
  ingress replica), pinned to the backend's site; behind Serve's HAProxy
  ingress (`--ingress haproxy`, Ray's fast path, how `make bench-full` runs
  it) or its Python proxy (`--ingress proxy`, the default config's);
- `gateway-standalone`: the same app under uvicorn (`first gateway up --standalone`);
- `litellm`: LiteLLM's proxy in front of the same backend, the reference peer;
- `bare-forwarder`: `bench/bare_forwarder.py`, uvicorn + httpx and nothing else,
  the yardstick for the standalone gateway's added latency.

Two backends:

- `site`: the local site's zero-delay simulated model on Ray Serve, as the
  gateway issue asks: the honest end-to-end cost, but the site's own Serve
  stack tops out well below the gateway, so capacity here is the site's;
- `fixed`: `bench/fixed_backend.py`, a canned answer from a bare uvicorn app,
  so the hop itself is what is measured (as the hop costs quoted in the
  gateway issue were).

Every (backend, path, concurrency) cell runs `--repeats` times, interleaved,
and the medians are reported. Writes one JSON file; `make bench-gateway`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
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

from bench.harness import one_replica_gateway
from serve_app.config import load_federation
from tests.support.processes import FirstProcess, free_port, start_standalone_gateway
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
MODEL = "sim-zero"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hello, how are you?"}],
    "max_tokens": 16,
}
# wrk prints one JSON line when a run is done; latencies are in microseconds.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Background:
    """A helper process in its own session, stopped with its whole process group."""

    name: str
    process: subprocess.Popen

    @classmethod
    def start(cls, name: str, args: list[str], workdir: Path, env: dict | None = None):
        with open(workdir / f"{name}.log", "w") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        return cls(name, process)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def wait_until_answering(target: Target, timeout_s: float, what: str) -> None:
    def answers() -> bool:
        response = httpx.post(
            target.url, json=target.body, headers=dict(target.headers), timeout=10
        )
        if response.status_code != 200:
            message = f"HTTP {response.status_code}: {response.text[:200]}"
            raise httpx.HTTPStatusError(message, request=response.request, response=response)
        return True

    try:
        eventually(
            answers,
            timeout_s,
            f"{what} to answer at {target.url}",
            interval_s=0.5,
            retry_on=(httpx.HTTPError,),
        )
    except AssertionError as exc:
        raise SystemExit(str(exc)) from None


def federation_files(
    workdir: Path, fixed_url: str, ray_temp: str, haproxy: bool
) -> tuple[Path, dict]:
    """The Serve-hosted federation's file (local site colocated) and its standalone twin's
    config (`start_standalone_gateway` picks its port).

    Both list a second site, `fixed`, that reports the local site's status but
    is reached at the fixed backend, so one gateway fronts both backends.
    """
    local = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    local["models"] = [
        {
            "id": MODEL,
            "engine": "simulated",
            "engine_kwargs": {"ttft_ms": 0, "tpot_ms": 0, "max_num_seqs": 256},
            "resources": {"cpus": 0.5},
            "autoscaling": {"preset": "hot", "max_replicas": 1},
        }
    ]
    gateway = one_replica_gateway(ray_temp)
    gateway["ray"]["haproxy"] = {"enabled": haproxy}
    serve_config = {
        # One ingress replica, like LiteLLM's one worker: the hop, not the scaling.
        "gateway": gateway,
        "sites": [
            {"name": "local", "site": local, "colocated": True, "channel": {"kind": "local"}},
        ],
        # API keys on (LiteLLM checks its master key too), the usage ledger on, no limits.
        "store": {"path": str(workdir / "first.db")},
        "limits": None,
    }
    serve_path = workdir / "federation-serve.yaml"
    serve_path.write_text(yaml.safe_dump(serve_config))
    colocated = load_federation(serve_path).sites[0]
    site_as_run = colocated.site_config.model_dump(mode="json")
    fixed = {"name": "fixed", "site": site_as_run, "base_url": fixed_url}
    serve_config["sites"].append(fixed)
    serve_path.write_text(yaml.safe_dump(serve_config))
    standalone_config = {
        "store": serve_config["store"],
        "limits": None,
        "sites": [{"name": "local", "site": site_as_run, "base_url": colocated.url}, fixed],
    }
    return serve_path, standalone_config


def start_serve_stack(serve_path: Path, workdir: Path) -> FirstProcess:
    """`first gateway up` of `federation_files`' Serve-hosted federation, our key registered."""
    return FirstProcess.start(
        ["gateway", "up", "--config", str(serve_path), "--with-key", "bench"],
        workdir,
        "serve",
        env={"FIRST_API_KEY": FIRST_KEY},
    )


# LiteLLM refuses to start without a master key, and then wants it on every request.
LITELLM_KEY = "sk-first-bench-7f3a9c2e5d1b4a6f"
# Our gateways' API key, registered by `first gateway up --with-key` from FIRST_API_KEY.
FIRST_KEY = "first-bench-0c8e6b2d4f1a3c5e7a9b"
# No downloads at start-up (cost map and friends), no telemetry, errors only.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MASTER_KEY": LITELLM_KEY,
}


def litellm_config(workdir: Path, site_url: str, fixed_url: str) -> Path:
    """LiteLLM as lean as it goes: no database, callbacks, spend logs or retries."""
    entries = [
        {
            "model_name": f"{MODEL}-{backend}",
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{url}/v1", "api_key": "x"},
        }
        for backend, url in (("site", site_url), ("fixed", fixed_url))
    ]
    path = workdir / "litellm.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_list": entries,
                "litellm_settings": {
                    "callbacks": [],
                    "success_callback": [],
                    "failure_callback": [],
                    "turn_off_message_logging": True,
                    "disable_end_user_cost_tracking": True,
                    "request_timeout": 60,
                    "num_retries": 0,
                },
                "router_settings": {"num_retries": 0},
                "general_settings": {
                    "disable_spend_logs": True,
                    "disable_error_logs": True,
                    "disable_reset_budget": True,
                    "background_health_checks": False,
                },
            }
        )
    )
    return path


@dataclass(frozen=True)
class Target:
    url: str
    body: dict
    headers: tuple[tuple[str, str], ...] = ()


def run_wrk(target: Target, concurrency: int, duration_s: int, workdir: Path) -> dict:
    script = workdir / "wrk.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers)
    script.write_text(WRK_SCRIPT % (json.dumps(target.body), headers))
    threads = 1 if concurrency == 1 else 2
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{duration_s}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            target.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    raw = json.loads(line.removeprefix("RESULT "))
    return {
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "errors": raw["errors"],
    }


def summarise(runs: list[dict]) -> dict:
    keys = ("p50_ms", "p90_ms", "p99_ms", "requests_per_s")
    summary = {key: round(statistics.median(r[key] for r in runs), 2) for key in keys}
    summary["requests"] = sum(r["requests"] for r in runs)
    summary["errors"] = sum(r["errors"] for r in runs)
    return summary


def added_latency(cells: dict, backend: str, concurrency: int) -> dict:
    direct = cells[(backend, "direct", concurrency)]
    added = {}
    for (b, path, c), cell in cells.items():
        if b == backend and c == concurrency and path != "direct":
            added[path] = {
                "p50_ms": round(cell["p50_ms"] - direct["p50_ms"], 2),
                "p99_ms": round(cell["p99_ms"] - direct["p99_ms"], 2),
            }
    return added


def sustained(cells: dict) -> dict:
    """Per backend and path, the most requests per second at any concurrency measured
    with under 1% errors (wrk's closed loop: the rate the path sustains)."""
    best: dict[str, float] = {}
    for (backend, path, _), cell in cells.items():
        if cell["errors"] < 0.01 * max(cell["requests"], 1):
            key = f"{backend}-{path}"
            best[key] = max(best.get(key, 0.0), cell["requests_per_s"])
    return best


def main() -> None:  # noqa: PLR0915 - one linear script: start, measure, stop
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/gateway.json")
    parser.add_argument("--duration-s", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument(
        "--ingress",
        choices=("proxy", "haproxy"),
        default="proxy",
        help="Serve's ingress for the Serve-hosted stack: its Python proxy (the default "
        "config's) or HAProxy (ray.haproxy.enabled, Ray's fast path).",
    )
    parser.add_argument(
        "--litellm",
        default=str(REPO / ".first" / "litellm-venv" / "bin" / "litellm"),
        help="LiteLLM's `litellm` command (make bench-gateway installs it).",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench-gateway installs it)")
    if not Path(args.litellm).exists():
        raise SystemExit(f"no LiteLLM at {args.litellm} (make bench-gateway installs it)")

    workdir = Path(tempfile.mkdtemp(prefix="first-bench-gateway-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    fixed_port, litellm_port = free_port(), free_port()
    fixed_url = f"http://127.0.0.1:{fixed_port}"
    serve_path, standalone_config = federation_files(
        workdir, fixed_url, ray_temp, args.ingress == "haproxy"
    )
    helpers: list[Background] = []
    firsts: list[FirstProcess] = []
    try:
        log(f"starting the fixed backend, workdir {workdir}")
        helpers.append(
            Background.start(
                "fixed",
                [sys.executable, "-m", "bench.fixed_backend", "--port", str(fixed_port)],
                workdir,
            )
        )
        log("starting the Serve-hosted gateway with the local site (first gateway up)")
        started = time.monotonic()
        serve = start_serve_stack(serve_path, workdir)
        firsts.append(serve)
        serve_url = serve.wait_ready(600)
        log(f"gateway on Serve ready in {time.monotonic() - started:.0f} s at {serve_url}")
        site_url = load_federation(serve_path).sites[0].url
        standalone, standalone_url = start_standalone_gateway(
            standalone_config,
            workdir / "federation-standalone.yaml",
            "standalone",
            timeout_s=120,
        )
        firsts.append(standalone)
        log(f"standalone gateway ready at {standalone_url}")
        env = {**os.environ, **LITELLM_ENV}
        helpers.append(
            Background.start(
                "litellm",
                [
                    args.litellm,
                    "--config",
                    str(litellm_config(workdir, site_url, fixed_url)),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(litellm_port),
                    "--num_workers",
                    "1",
                ],
                workdir,
                env,
            )
        )
        litellm_url = f"http://127.0.0.1:{litellm_port}"

        chat = "/v1/chat/completions"
        targets: dict[tuple[str, str], Target] = {}
        # backend, its site in the federation files, and where it answers directly
        for backend, site, direct in (("site", "local", site_url), ("fixed", "fixed", fixed_url)):
            targets[(backend, "direct")] = Target(f"{direct}{chat}", BODY)
            ours = (("Authorization", f"Bearer {FIRST_KEY}"),)
            targets[(backend, "gateway-serve")] = Target(
                f"{serve_url}/sites/{site}{chat}", BODY, ours
            )
            targets[(backend, "gateway-standalone")] = Target(
                f"{standalone_url}/sites/{site}{chat}", BODY, ours
            )
            targets[(backend, "litellm")] = Target(
                f"{litellm_url}{chat}",
                {**BODY, "model": f"{MODEL}-{backend}"},
                (("Authorization", f"Bearer {LITELLM_KEY}"),),
            )
            bare_port = free_port()
            bare = [sys.executable, "-m", "bench.bare_forwarder", "--port", str(bare_port)]
            helpers.append(
                Background.start(f"bare-{backend}", [*bare, "--backend", direct], workdir)
            )
            targets[(backend, "bare-forwarder")] = Target(
                f"http://127.0.0.1:{bare_port}{chat}", BODY
            )
        for (backend, path), target in targets.items():
            wait_until_answering(target, 180, f"{backend} via {path}")
            run_wrk(target, 8, 2, workdir)  # warm connections and code paths
        log("every path answers; measuring")

        runs: dict[tuple[str, str, int], list[dict]] = {}
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                for (backend, path), target in targets.items():
                    result = run_wrk(target, concurrency, args.duration_s, workdir)
                    runs.setdefault((backend, path, concurrency), []).append(result)
                    log(
                        f"run {repeat + 1}/{args.repeats} c={concurrency:<3} {backend:<5} "
                        f"{path:<18} p50 {result['p50_ms']:7.2f} ms  p99 "
                        f"{result['p99_ms']:7.2f} ms  {result['requests_per_s']:6.0f} req/s"
                        + (f"  {result['errors']} errors" if result["errors"] else "")
                    )
    finally:
        for process in reversed(firsts):
            process.stop()
        for helper in helpers:
            helper.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)

    cells = {key: summarise(value) for key, value in runs.items()}
    result = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
        },
        "load": {
            "tool": "wrk",
            "duration_s": args.duration_s,
            "repeats": args.repeats,
            "request": BODY,
        },
        "serve_ingress": args.ingress,
        "cells": [
            {"backend": b, "path": p, "concurrency": c, **cell} for (b, p, c), cell in cells.items()
        ],
        "added_latency_ms": {
            f"{backend}-c{c}": added_latency(cells, backend, c)
            for backend in ("site", "fixed")
            for c in args.concurrency
        },
        "sustained_requests_per_s": sustained(cells),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["added_latency_ms"], indent=2))


if __name__ == "__main__":
    main()
