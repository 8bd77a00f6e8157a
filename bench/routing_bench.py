"""Routing quality: placement policies across sites of unequal speed and capacity.

Three simulated sites (bench/README.md: fast, medium, slow; their capacity in
requests per second follows from their timing) run colocated on one
Serve-hosted stack. One standalone gateway per policy fronts all three, and
vLLM's own load generator, `vllm bench serve`, sends Poisson arrivals
(`--request-rate`, burstiness 1) at 50, 80 and 95% of the sites' total
capacity through each gateway in turn. Reported per policy and load: time
to first token and end-to-end latency, p50 and p99, and throughput.

`python -m bench.routing_bench [--quick]`; part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.gateway_bench import log
from bench.harness import (
    TINY_MODEL,
    latency_summary,
    running_policy_gateway,
    running_stack,
    sites_stack,
    vllm_bench_serve,
)

MODEL = "sim-route"
INPUT_TOKENS, OUTPUT_TOKENS = 64, 32
POLICIES = ("least-loaded", "round-robin", "random")
LOADS = (0.5, 0.8, 0.95)


@dataclass(frozen=True)
class SiteSpeed:
    name: str
    ttft_ms: float
    tpot_ms: float
    max_num_seqs: int

    @property
    def capacity_rps(self) -> float:
        """Requests per second it finishes when every slot is busy."""
        seconds = (self.ttft_ms + (OUTPUT_TOKENS - 1) * self.tpot_ms) / 1000
        return self.max_num_seqs / seconds


SITES = (
    SiteSpeed("fast", ttft_ms=50, tpot_ms=15, max_num_seqs=6),
    SiteSpeed("medium", ttft_ms=80, tpot_ms=25, max_num_seqs=4),
    SiteSpeed("slow", ttft_ms=150, tpot_ms=40, max_num_seqs=3),
)


def site(speed: SiteSpeed) -> dict:
    return {
        "name": speed.name,
        "models": [
            {
                "id": MODEL,
                "engine": "simulated",
                "engine_kwargs": {
                    "ttft_ms": speed.ttft_ms,
                    "tpot_ms": speed.tpot_ms,
                    "max_num_seqs": speed.max_num_seqs,
                    "slowdown_per_seq": 0,
                },
                "resources": {"cpus": 0.5},
                "autoscaling": {"preset": "hot", "max_replicas": 1},
                "stream_interval_ms": 0,
            }
        ],
    }


def poisson(rate: float, prompts: int) -> list[str]:
    return [
        "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS),
        "--random-output-len", str(OUTPUT_TOKENS), "--ignore-eos",
        "--request-rate", f"{rate:.3f}", "--burstiness", "1.0", "--num-prompts", str(prompts),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/routing.json")
    parser.add_argument(
        "--quick", action="store_true", help="Only 80% load, 10 s per run instead of 40 s."
    )
    parser.add_argument("--tokenizer", default=str(TINY_MODEL))
    args = parser.parse_args()
    seconds = 10 if args.quick else 40
    capacity = sum(site.capacity_rps for site in SITES)
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-routing-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    stack_path = sites_stack(workdir, ray_temp, [site(speed) for speed in SITES])
    runs = []
    log(f"starting three simulated sites ({capacity:.1f} req/s in all), workdir {workdir}")
    with running_stack(stack_path, workdir, ray_temp, 600):
        for policy in POLICIES:
            with running_policy_gateway(stack_path, policy, workdir) as url:
                tokenizer = Path(args.tokenizer)
                warm_up = workdir / "warm-up.json"
                vllm_bench_serve(url, MODEL, tokenizer, warm_up, *poisson(2.0, 10))
                for load in (0.8,) if args.quick else LOADS:
                    rate = load * capacity
                    out = workdir / f"{policy}-{load}.json"
                    raw = vllm_bench_serve(
                        url, MODEL, tokenizer, out, *poisson(rate, int(rate * seconds))
                    )
                    run = {"policy": policy, "load": load, "rate_per_s": round(rate, 2)}
                    run |= latency_summary(raw)
                    runs.append(run)
                    log(
                        f"{policy:<13} load {load:.0%}: TTFT p50 {run['p50_ttft_ms']:7.1f} ms "
                        f"p99 {run['p99_ttft_ms']:7.1f} ms, e2e p99 "
                        f"{run['p99_e2el_ms']:7.1f} ms, {run['requests_per_s']:.1f} req/s"
                    )

    by = {(r["policy"], r["load"]): r for r in runs}
    result = {
        "what": "placement policies, three simulated sites of unequal speed, Poisson arrivals",
        "load_tool": "vllm bench serve (random dataset, Poisson arrivals)",
        "sites": [{**site.__dict__, "capacity_rps": round(site.capacity_rps, 2)} for site in SITES],
        "request": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        "seconds_per_run": seconds,
        "runs": runs,
        "target": "least-loaded p99 TTFT at 80% load at least 2x lower than round-robin",
        "least_loaded_vs_round_robin_p99_ttft_at_80": round(
            by[("round-robin", 0.8)]["p99_ttft_ms"] / by[("least-loaded", 0.8)]["p99_ttft_ms"], 2
        ),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
