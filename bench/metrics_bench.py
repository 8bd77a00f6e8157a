"""Metrics benchmark: gateway throughput with its Prometheus metrics on and off.

The issue's target: with metrics on, throughput within 3% of metrics off.
Three standalone gateways (`first gateway up --standalone`), identical but
for their metrics, in front of the same backend, measured in interleaved
rounds with wrk so that the machine's drift hits all three alike:

- `off`: `metrics.enabled: false`;
- `on`: the one process's own registry (how a standalone gateway runs);
- `on-multiprocess`: samples written to files in PROMETHEUS_MULTIPROC_DIR,
  as every gateway replica does under Ray Serve (serve_app/metrics.py).

The backend is `bench/fixed_backend.py` (a canned answer from a bare
uvicorn app), so the gateway, not a model, is the bottleneck and any cost
of the metrics shows. Site status comes from the Serve-hosted stack of
bench/gateway_bench.py. A scrape of each gateway's /metrics every second
runs beside the load, as Prometheus would. `make bench-metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.gateway_bench import (
    BODY,
    FIRST_KEY,
    Background,
    Target,
    federation_files,
    log,
    run_wrk,
    start_serve_stack,
    summarise,
    wait_until_answering,
)
from serve_app.metrics import MULTIPROCESS_DIR_VARIABLE
from tests.support.processes import FirstProcess, free_port, start_standalone_gateway

CHAT = "/sites/fixed/v1/chat/completions"


def scrape_every_second(urls: list[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(1.0):
            for url in urls:
                with contextlib.suppress(httpx.HTTPError):  # a slow scrape is no result
                    client.get(f"{url}/metrics")


def start_gateways(
    workdir: Path,
    standalone: dict,
    firsts: list[FirstProcess],
    variants: dict[str, tuple[dict, dict[str, str]]],
) -> dict[str, Target]:
    """One standalone gateway per variant (its config changes, its environment), answering;
    their targets by variant, in the variants' order."""
    urls: dict[str, str] = {}
    for variant, (changes, env) in variants.items():
        process, urls[variant] = start_standalone_gateway(
            {**standalone, **changes},
            workdir / f"federation-{variant}.yaml",
            variant,
            env=env,
            timeout_s=120,
        )
        firsts.append(process)
    ours = (("Authorization", f"Bearer {FIRST_KEY}"),)
    targets = {v: Target(f"{url}{CHAT}", BODY, ours) for v, url in urls.items()}
    for variant, target in targets.items():
        wait_until_answering(target, 180, f"gateway {variant}")
        run_wrk(target, 8, 2, workdir)  # warm connections and code paths
    return targets


@contextlib.contextmanager
def gateways_on_a_fixed_backend(
    name: str, variants: dict[str, tuple[dict, dict[str, str]]]
) -> Iterator[tuple[Path, dict[str, Target]]]:
    """The fixed backend, the Serve-hosted stack for the sites' status, and one standalone
    gateway per variant in front of the backend, answering; all stopped afterwards.

    An environment variable set to "" in a variant is given a folder of its own (the
    multiprocess metrics' samples).
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"first-bench-{name}-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    fixed_port = free_port()
    fixed_url = f"http://127.0.0.1:{fixed_port}"
    serve_path, standalone = federation_files(workdir, fixed_url, ray_temp, haproxy=False)
    for variant, (_, env) in variants.items():
        for key in [k for k, v in env.items() if v == ""]:
            env[key] = str(workdir / f"{variant}-{key.lower()}")
            Path(env[key]).mkdir()
    fixed = Background.start(
        "fixed",
        [sys.executable, "-m", "bench.fixed_backend", "--port", str(fixed_port)],
        workdir,
    )
    firsts: list[FirstProcess] = []
    try:
        log(f"starting the Serve-hosted stack (the sites' status), workdir {workdir}")
        serve = start_serve_stack(serve_path, workdir)
        firsts.append(serve)
        serve.wait_ready(600)
        yield workdir, start_gateways(workdir, standalone, firsts, variants)
    finally:
        for process in reversed(firsts):
            process.stop()
        fixed.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


def measure(args, targets: dict[str, Target], workdir: Path) -> dict[tuple[str, int], list]:
    """Every variant at every concurrency, `args.repeats` interleaved rounds."""
    variants = list(targets)
    runs: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for concurrency in args.concurrency:
            # Rotate the order, so that no variant always runs first in a round.
            shift = repeat % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                result = run_wrk(targets[variant], concurrency, args.duration_s, workdir)
                runs.setdefault((variant, concurrency), []).append(result)
                log(
                    f"run {repeat + 1}/{args.repeats} c={concurrency:<3} {variant:<16} "
                    f"{result['requests_per_s']:6.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
                    + (f"  {result['errors']} errors" if result["errors"] else "")
                )
    return runs


def ratios_to_off(runs: dict[tuple[str, int], list], concurrencies: list[int]) -> dict:
    """Per round, each `on` variant against the `off` run of the same round; then the median."""
    ratios = {}
    for concurrency in concurrencies:
        off = runs[("off", concurrency)]
        for variant in ("on", "on-multiprocess"):
            per_round = [
                on["requests_per_s"] / base["requests_per_s"]
                for on, base in zip(runs[(variant, concurrency)], off, strict=True)
            ]
            ratios[f"{variant}-c{concurrency}"] = {
                "median": round(statistics.median(per_round), 3),
                "rounds": [round(r, 3) for r in per_round],
            }
    return ratios


def write_result(args, runs: dict[tuple[str, int], list], **fields) -> None:
    """`fields`, the load, every (variant, concurrency) cell's medians, to `args.out`."""
    cells = {key: summarise(value) for key, value in runs.items()}
    result = {
        **fields,
        "load": {"tool": "wrk", "duration_s": args.duration_s, "repeats": args.repeats},
        "cells": [{"variant": v, "concurrency": c, **cell} for (v, c), cell in cells.items()],
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/metrics.json")
    parser.add_argument("--duration-s", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench-metrics installs it)")

    variants = {
        "off": ({"metrics": {"enabled": False}}, {}),
        "on": ({"metrics": {"enabled": True}}, {}),
        "on-multiprocess": ({"metrics": {"enabled": True}}, {MULTIPROCESS_DIR_VARIABLE: ""}),
    }
    stop_scraping = threading.Event()
    with gateways_on_a_fixed_backend("metrics", variants) as (workdir, targets):
        urls = [target.url.removesuffix(CHAT) for target in targets.values()]
        threading.Thread(
            target=scrape_every_second, args=(urls, stop_scraping), daemon=True
        ).start()
        log("every gateway answers; measuring")
        try:
            runs = measure(args, targets, workdir)
        finally:
            stop_scraping.set()

    ratios = ratios_to_off(runs, args.concurrency)
    write_result(
        args,
        runs,
        what="gateway throughput with metrics on / off, standalone gateways, fixed backend",
        target="metrics on at least 0.97x the throughput of metrics off",
        throughput_ratio_on_over_off=ratios,
    )
    for name, ratio in ratios.items():
        log(f"{name}: {ratio['median']:.3f}x of metrics off (rounds {ratio['rounds']})")


if __name__ == "__main__":
    main()
