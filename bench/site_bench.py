"""Site benchmark: start-up time, memory, chat latency, simulated-engine capacity.

Starts `first site up` on the given site config (free ports, private Ray
temp folder), measures, stops it, and writes one JSON file. Run with
`make bench`; results are committed under bench/results/.

Measured:
- seconds from `first site up` (already installed, model built) to the
  first successful completion of every warm model (the READY line);
- proportional resident memory (PSS) of every process of the running stack;
- chat latency p50/p99 on the vLLM model at 1 and 16 concurrent requests;
- requests per second that one simulated-engine replica sustains through
  Serve, with zero simulated delay (so Serve and the ingress are the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

from bench.harness import percentile
from tests.support.processes import FirstProcess, free_port

ZERO_DELAY_MODEL = "sim-zero"


def bench_site_config(path: str, ray_temp: str) -> dict:
    site = yaml.safe_load(Path(path).read_text())
    site["ray"].update(
        dashboard_port=free_port(), metrics_export_port=free_port(), temp_dir=ray_temp
    )
    site["serve"]["port"] = free_port()
    site["models"].append(
        {
            "id": ZERO_DELAY_MODEL,
            "engine": "simulated",
            "engine_kwargs": {"ttft_ms": 0, "tpot_ms": 0, "max_num_seqs": 256},
            "resources": {"cpus": 0.5},
            "autoscaling": {"preset": "hot", "max_replicas": 1},
        }
    )
    return site


def stack_pss_mib(root: psutil.Process) -> float:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


async def _load(
    base_url: str, body: dict, concurrency: int, requests: int
) -> tuple[list[float], float]:
    """Send `requests` requests, `concurrency` at a time; latencies (s) and wall time."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def latency_run(
    base_url: str, model: str, concurrency: int, requests: int, max_tokens: int
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "max_tokens": max_tokens,
    }
    asyncio.run(_load(base_url, body, concurrency, min(requests, 2 * concurrency)))  # warm-up
    latencies, wall = asyncio.run(_load(base_url, body, concurrency, requests))
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": requests,
        "max_tokens": max_tokens,
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "requests_per_s": round(requests / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cluster_configs/local.yaml")
    parser.add_argument("--out", default="bench/results/site.json")
    args = parser.parse_args()

    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-site-"))
    config_path = workdir / "site.yaml"
    config_path.write_text(yaml.safe_dump(bench_site_config(args.config, ray_temp)))
    print(f"[bench] starting the site ({config_path})", file=sys.stderr)
    started = time.monotonic()
    site = FirstProcess.start(["site", "up", "--config", str(config_path)], workdir, "site")
    try:
        try:
            base_url = site.wait_ready(900)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"site did not start: {exc}") from None
        startup_s = time.monotonic() - started
        print(f"[bench] ready in {startup_s:.1f} s at {base_url}", file=sys.stderr)
        memory = stack_pss_mib(psutil.Process(site.process.pid))
        runs = []
        for concurrency, requests in ((1, 50), (16, 160)):
            print(f"[bench] tiny-llama chat, concurrency {concurrency}", file=sys.stderr)
            runs.append(latency_run(base_url, "tiny-llama", concurrency, requests, max_tokens=16))
        print("[bench] simulated engine capacity, concurrency 32", file=sys.stderr)
        capacity = latency_run(base_url, ZERO_DELAY_MODEL, 32, 1000, max_tokens=16)
    finally:
        site.stop()
    result = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
        },
        "startup_to_first_completion_s": round(startup_s, 1),
        "stack_pss_mib": round(memory),
        "chat_latency": runs,
        "simulated_replica_capacity": capacity,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
