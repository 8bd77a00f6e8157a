"""The concurrency curve of arXiv 2508.17814, through the gateway and straight to the site.

`first gateway up` on the embedded default (the local site colocated, the
tiny model on vLLM's CPU build, held at one replica), then `vllm bench serve`
at 1, 2, 4 ... 128 concurrent requests (`--max-concurrency`, no rate limit),
each level through the gateway on Serve, through the same gateway standalone
(uvicorn) and directly at the site in turn (`--quick`: 1, 4, 16, 64, 128 and
fewer requests per level): latency p50
and p99, time to first token, requests and tokens per second. The ratio of
each path's best throughput to the site's best is the whole stack's cost
when the engine is the bottleneck.

`python -m bench.concurrency_bench [--quick]`; part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from bench.gateway_bench import FIRST_KEY, log, start_serve_stack
from bench.harness import (
    REPO,
    TINY_MODEL,
    cpu_use,
    latency_summary,
    standalone_gateway,
    vllm_bench_serve,
)
from serve_app.config import load_federation
from tests.support.processes import FirstProcess, free_port, start_standalone_gateway

MODEL = "tiny-llama"
INPUT_TOKENS, OUTPUT_TOKENS = 64, 32


def stack_config(workdir: Path, ray_temp: str) -> Path:
    config = yaml.safe_load((REPO / "cluster_configs" / "local-federation.yaml").read_text())
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["models"] = [m for m in site["models"] if m["id"] == MODEL]
    site["models"][0]["source"] = str(TINY_MODEL)
    # One engine, so that both paths meet the same one (a second replica would
    # share the same 2 cores and measure the machine, not the path).
    site["models"][0]["autoscaling"] = {"preset": "hot", "max_replicas": 1}
    config["sites"][0]["site"] = site
    config["gateway"]["port"] = free_port()
    config["gateway"]["ray"].update(
        dashboard_port=free_port(), metrics_export_port=free_port(), temp_dir=ray_temp
    )
    config["gateway"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    config["store"] = {"path": str(workdir / "first.db")}
    config["limits"] = None
    path = workdir / "federation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def closed_loop(concurrency: int, prompts: int) -> list[str]:
    return [
        "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS),
        "--random-output-len", str(OUTPUT_TOKENS), "--ignore-eos",
        "--max-concurrency", str(concurrency), "--num-prompts", str(prompts),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/concurrency.json")
    parser.add_argument("--quick", action="store_true", help="Fewer requests per level.")
    args = parser.parse_args()
    levels = [1, 4, 16, 64, 128] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    per_level = 2 if args.quick else 8  # requests per concurrent slot
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-concurrency-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    path = stack_config(workdir, ray_temp)
    os.environ["OPENAI_API_KEY"] = FIRST_KEY  # vllm bench serve sends it as the bearer token
    runs = []
    processes: list[FirstProcess] = []
    try:
        log(f"starting the stack (first gateway up), workdir {workdir}")
        stack = start_serve_stack(path, workdir)
        processes.append(stack)
        gateway_url = stack.wait_ready(600)
        # The same gateway under uvicorn, with the same keys and ledger.
        standalone, standalone_url = start_standalone_gateway(
            standalone_gateway(path, workdir),
            workdir / "federation-standalone.yaml",
            "standalone",
            timeout_s=120,
        )
        processes.append(standalone)
        site_url = load_federation(path).sites[0].url
        paths = {"gateway": gateway_url, "standalone": standalone_url, "site": site_url}
        for url in paths.values():  # warm both paths up
            vllm_bench_serve(url, MODEL, TINY_MODEL, workdir / "warm.json", *closed_loop(8, 32))
        for concurrency in levels:
            prompts = max(concurrency * per_level, 16)
            for target, url in paths.items():
                out = workdir / f"{target}-{concurrency}.json"
                with cpu_use() as cpu:
                    raw = vllm_bench_serve(
                        url, MODEL, TINY_MODEL, out, *closed_loop(concurrency, prompts)
                    )
                run = {"path": target, "concurrency": concurrency, **latency_summary(raw)}
                run["cpu_s"] = cpu
                runs.append(run)
                log(
                    f"c={concurrency:<4} {target:<10} p50 {run['p50_e2el_ms']:7.1f} ms "
                    f"p99 {run['p99_e2el_ms']:7.1f} ms TTFT p50 {run['p50_ttft_ms']:6.1f} ms "
                    f"{run['requests_per_s']:6.1f} req/s {run['output_tokens_per_s']:7.1f} tok/s"
                )
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)

    through = [r for r in runs if r["path"] == "gateway"]
    standalone_runs = [r for r in runs if r["path"] == "standalone"]
    direct = {r["concurrency"]: r for r in runs if r["path"] == "site"}
    best = max(direct.values(), key=lambda r: r["output_tokens_per_s"])

    def at_best(path_runs: list[dict]) -> float:
        """Each path at its own best concurrency: single levels are too noisy here."""
        peak = max(r["output_tokens_per_s"] for r in path_runs)
        return round(peak / best["output_tokens_per_s"], 3)

    def cpu_per_1k_tokens(run: dict) -> dict:
        tokens = run["completed"] * OUTPUT_TOKENS / 1000
        spent = {k: v for k, v in run["cpu_s"].items() if k not in ("wall_s", "cores")}
        return {role: round(seconds / tokens, 3) for role, seconds in spent.items()}

    at_level = best["concurrency"]
    result = {
        "what": "tiny-llama (vLLM CPU) through the gateway on Serve, 1 to 128 concurrent",
        "load_tool": "vllm bench serve (random dataset, closed loop at --max-concurrency)",
        "request": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        "runs": through,
        "standalone_runs": standalone_runs,
        "site_runs": list(direct.values()),
        "best_site_concurrency": best["concurrency"],
        "target": "through the whole stack at least 0.95x the site's own throughput at the "
        "engine's best concurrency",
        "throughput_gateway_over_site_at_best": at_best(through),
        "throughput_standalone_over_site_at_best": at_best(standalone_runs),
        # Where the CPU went at the site's best level, per 1,000 output tokens: the
        # engine's share is what a path leaves it on this machine's shared cores.
        "cpu_s_per_1k_tokens_at_best_site_level": {
            run["path"]: cpu_per_1k_tokens(run) for run in runs if run["concurrency"] == at_level
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
