"""What a site model's serving options cost at plain vLLM's best concurrency.

The site alone (`first site up`, HAProxy and direct streaming on), its one
model held at one replica, in three variants that differ in one option each:
as shipped (vLLM's engine metrics exported through Ray, HAProxy balancing the
replicas itself), `engine_metrics: false`, and `request_router: prefix-aware`
(Ray's LLMRouter asked by HAProxy for every request). Plain `vllm serve` of
the same model and engine arguments is measured before and after them, so the
yardstick's own drift on this shared machine shows. Each variant gets
`vllm bench serve` at 128 concurrent requests, four runs of 1,024 requests
(the engine settles in a regime of small or of large steps per run, see
`concurrency_bench.repeats_at`), and the median is kept; CPU by role as in
the concurrency curve.

`python -m bench.site_options_bench`; part of `make bench-full`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import yaml

from bench.concurrency_bench import (
    MODEL,
    closed_loop,
    cpu_per_1k_tokens,
    shipped_model,
    start_plain_vllm,
)
from bench.gateway_bench import FIRST_KEY, log
from bench.harness import REPO, TINY_MODEL, cpu_use, latency_summary, vllm_bench_serve
from deployments.site_config import SiteConfig
from tests.support.processes import FirstProcess, free_port

CONCURRENCY = 128
VARIANTS = {
    "shipped": {},
    "engine_metrics_off": {"engine_metrics": False},
    "prefix_aware": {"request_router": "prefix-aware"},
}


def site_config(variant: dict, ray_temp: str) -> dict:
    """The embedded default's site with only the shipped vLLM model, held at one replica."""
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    model = shipped_model() | {"source": str(TINY_MODEL)} | variant
    model["autoscaling"] = {"preset": "hot", "max_replicas": 1}
    site["models"] = [model]
    site["serve"]["port"] = free_port()
    site["ray"].update(
        dashboard_port=free_port(),
        metrics_export_port=free_port(),
        temp_dir=ray_temp,
        haproxy={"enabled": True},
    )
    return site


def measure(url: str, path: str, repeats: int, prompts: int, workdir: Path) -> list[dict]:
    vllm_bench_serve(url, MODEL, TINY_MODEL, workdir / "warm.json", *closed_loop(8, 64))
    runs = []
    for attempt in range(repeats):
        with cpu_use() as cpu:
            raw = vllm_bench_serve(
                url, MODEL, TINY_MODEL, workdir / f"{path}-{attempt}.json",
                *closed_loop(CONCURRENCY, prompts),
            )  # fmt: skip
        run = {"path": path, "concurrency": CONCURRENCY, **latency_summary(raw), "cpu_s": cpu}
        runs.append(run)
        log(
            f"{path:<20} {run['requests_per_s']:6.1f} req/s {run['output_tokens_per_s']:7.1f} tok/s"
        )
    return runs


def measure_plain_vllm(label: str, repeats: int, prompts: int, workdir: Path) -> list[dict]:
    vllm, url = start_plain_vllm(workdir)
    try:
        return measure(url, label, repeats, prompts, workdir)
    finally:
        vllm.stop()


def measure_site(name: str, variant: dict, repeats: int, prompts: int, workdir: Path) -> list:
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    config = site_config(variant, ray_temp)
    path = workdir / f"site-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log(f"starting the site ({name}): {path}")
    site = FirstProcess.start(["site", "up", "--config", str(path)], workdir, f"site-{name}")
    try:
        base_url = site.wait_ready(900)
        parsed = SiteConfig.model_validate(config)
        route = parsed.model_route(parsed.model(MODEL))
        return measure(base_url + route, name, repeats, prompts, workdir)
    finally:
        site.stop()


def summarise(runs: list[dict]) -> dict:
    by_path: dict[str, list[dict]] = {}
    for run in runs:
        by_path.setdefault(run["path"], []).append(run)
    median = {
        path: statistics.median(r["output_tokens_per_s"] for r in path_runs)
        for path, path_runs in by_path.items()
    }
    vllm = statistics.median(r["output_tokens_per_s"] for r in runs if r["path"].startswith("vllm"))
    return {
        "median_output_tokens_per_s": {path: round(value, 1) for path, value in median.items()},
        "median_over_vllm": {path: round(value / vllm, 3) for path, value in median.items()},
        "over_shipped": {
            path: round(value / median["shipped"], 3)
            for path, value in median.items()
            if not path.startswith("vllm")
        },
        # CPU by role of the run closest to the median.
        "cpu_s_per_1k_tokens": {
            path: cpu_per_1k_tokens(
                min(path_runs, key=lambda r: abs(r["output_tokens_per_s"] - median[path]))
            )
            for path, path_runs in by_path.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/site_options.json")
    parser.add_argument("--repeats", type=int, default=4, help="Runs per variant (median).")
    parser.add_argument("--prompts", type=int, default=1024, help="Requests per run.")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = FIRST_KEY
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-site-options-"))
    runs = measure_plain_vllm("vllm_before", args.repeats, args.prompts, workdir)
    for name, variant in VARIANTS.items():
        runs += measure_site(name, variant, args.repeats, args.prompts, workdir)
    runs += measure_plain_vllm("vllm_after", args.repeats, args.prompts, workdir)
    result = {
        "what": "tiny-llama (vLLM CPU): the site's model route (HAProxy, direct streaming) "
        f"at {CONCURRENCY} concurrent, one option changed per variant, against plain vllm "
        "serve before and after",
        "load_tool": "vllm bench serve (random dataset, closed loop at --max-concurrency)",
        "request": {"input_tokens": 64, "output_tokens": 32, "per_run": args.prompts},
        "variants": VARIANTS,
        **summarise(runs),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
