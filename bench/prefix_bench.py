"""Prefix-cache-aware federated routing against least-loaded and round-robin, with real caches.

Two sites, each a real vLLM engine (CPU build) serving a small random-weight
Llama with a 2,048-token context (`first model build-tiny --context 2048
--hidden-size 512 --layers 4`, so that prefill costs something), prefix
caching on, and a KV cache held to `--cache-blocks` blocks: large enough for
half of the workload's documents, too small for all of them. The two sites
run colocated on one Serve stack; one standalone gateway per policy fronts
both.

Inside a site (`--site-routers`, part of the full run): one site whose model
runs two such replicas, once with Serve's default router (power of two
choices) and once with `request_router: prefix-aware` (ray.serve.llm's
`PrefixCacheAffinityRouter`), the same workload sent straight to the site.

The workload is multi-turn chat over shared documents, written as a custom
`vllm bench serve` dataset: each of `--documents` documents (about 1,000
tokens) is discussed in `--conversations` conversations of `--turns` turns;
every turn's prompt is the document, the conversation so far and a new
question. Turns go out in order (all first turns, then all second turns...),
as Poisson arrivals at `--rate`. Placement that follows the prefixes keeps
each document (and each conversation) at one site, whose cache holds it;
the others send every document everywhere, and the caches thrash.

`python -m bench.prefix_bench`; part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from bench.gateway_bench import log
from bench.harness import (
    REPO,
    latency_summary,
    running_policy_gateway,
    running_stack,
    sites_stack,
    vllm_bench_serve,
)
from serve_app.config import load_federation

MODEL = "tiny-prefix"
PREFIX_MODEL = REPO / ".first" / "models" / "tiny-prefix"
POLICIES = ("prefix-aware", "least-loaded", "round-robin")
SITE_ROUTERS = ("prefix-aware", "power-of-two")
WORDS = [
    "climate",
    "ocean",
    "model",
    "grid",
    "flux",
    "carbon",
    "aerosol",
    "cloud",
    "ice",
    "sheet",
    "sea",
    "level",
    "forecast",
    "ensemble",
    "member",
    "run",
    "node",
    "core",
    "job",
    "queue",
    "partition",
    "allocation",
    "storage",
    "archive",
    "tensor",
    "kernel",
    "matrix",
    "solver",
    "mesh",
    "particle",
    "plasma",
    "field",
    "energy",
    "spectrum",
    "sample",
]


def site(name: str, cache_blocks: int, replicas: int = 1, router: str = "power-of-two") -> dict:
    return {
        "name": name,
        "models": [
            {
                "id": MODEL,
                "source": str(PREFIX_MODEL),
                "engine": "vllm",
                "engine_kwargs": {
                    "dtype": "float32",
                    "enforce_eager": True,
                    "max_model_len": 2048,
                    "max_num_seqs": 8,
                    "enable_prefix_caching": True,
                    "num_gpu_blocks_override": cache_blocks,
                },
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                "resources": {"cpus": 1},
                "autoscaling": {
                    "preset": "hot",
                    "min_replicas": replicas,
                    "initial_replicas": replicas,
                    "max_replicas": replicas,
                },
                "request_router": router,
            }
        ],
    }


def conversations(path: Path, documents: int, per_document: int, turns: int, seed: int) -> int:
    """Write the dataset (JSONL, one prompt per line, in sending order); its line count."""
    chooser = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(chooser.choice(WORDS) for _ in range(words))

    texts = [f"Document {d}: {text(200)}" for d in range(documents)]  # ~1,000 tokens
    histories = {(d, c): f"{texts[d]}\n\n" for d in range(documents) for c in range(per_document)}
    lines = []
    for turn in range(turns):
        order = list(histories)
        chooser.shuffle(order)
        for key in order:
            question = f"User: question {turn} about {text(8)}?\n"
            lines.append({"prompt": histories[key] + question})
            histories[key] += question + f"Assistant: {text(16)}\n"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


def measured(url: str, dataset: Path, load: list[str], out: Path) -> dict:
    raw = vllm_bench_serve(url, MODEL, PREFIX_MODEL, out, *load, "--dataset-path", str(dataset))
    run = latency_summary(raw)
    log(
        f"{out.stem:<22} TTFT mean {run['mean_ttft_ms']:7.1f} ms p50 "
        f"{run['p50_ttft_ms']:7.1f} p99 {run['p99_ttft_ms']:7.1f}, "
        f"{run['output_tokens_per_s']:.1f} tokens/s"
    )
    return run


def federation_runs(args: argparse.Namespace, workdir: Path, load: list[str]) -> list[dict]:
    """Each placement policy through its own standalone gateway, two one-replica sites."""
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    sites = [site(name, args.cache_blocks) for name in ("east", "west")]
    stack_path = sites_stack(workdir, ray_temp, sites)
    runs = []
    log(f"starting two vLLM sites, workdir {workdir}")
    with running_stack(stack_path, workdir, ray_temp, 900):
        for seed, policy in enumerate(POLICIES):
            with running_policy_gateway(stack_path, policy, workdir) as url:
                run = measured(url, args.datasets[seed], load, workdir / f"{policy}.json")
            runs.append({"policy": policy, **run})
    return runs


def site_runs(args: argparse.Namespace, workdir: Path, load: list[str]) -> list[dict]:
    """Serve's replica routers inside one site of two replicas, the site called directly."""
    runs = []
    for seed, router in enumerate(SITE_ROUTERS, start=len(POLICIES)):
        ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
        pool = site(f"pool-{router}", args.cache_blocks, replicas=2, router=router)
        stack_path = sites_stack(workdir, ray_temp, [pool])
        log(f"starting one site of two vLLM replicas, router {router}")
        with running_stack(stack_path, workdir, ray_temp, 900):
            url = load_federation(stack_path).sites[0].url
            run = measured(url, args.datasets[seed], load, workdir / f"site-{router}.json")
        runs.append({"router": router, **run})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/prefix.json")
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--conversations", type=int, default=3, help="Per document.")
    parser.add_argument("--quick", action="store_true", help="2 conversations per document.")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1.5, help="Requests per second.")
    parser.add_argument(
        "--cache-blocks", type=int, default=64, help="KV blocks (128 tokens) per replica."
    )
    parser.add_argument(
        "--site-routers",
        action="store_true",
        help="Also compare Serve's replica routers inside one site of two replicas.",
    )
    args = parser.parse_args()
    if args.quick:
        args.conversations = 2
    if not (PREFIX_MODEL / "config.json").exists():
        raise SystemExit(f"no model at {PREFIX_MODEL} (make bench builds it)")
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-prefix-"))
    # Each run gets its own documents, so that none starts with the caches the one
    # before it filled.
    args.datasets = [workdir / f"conversations-{seed}.jsonl" for seed in range(5)]
    for seed, path in enumerate(args.datasets):
        prompts = conversations(path, args.documents, args.conversations, args.turns, seed)
    load = [
        "--dataset-name", "custom", "--disable-shuffle",
        "--custom-output-len", "16", "--ignore-eos", "--skip-chat-template",
        "--request-rate", str(args.rate), "--burstiness", "1.0", "--num-prompts", str(prompts),
    ]  # fmt: skip
    runs = federation_runs(args, workdir, load)
    by = {run["policy"]: run for run in runs}
    result = {
        "what": "prefix-aware placement vs least-loaded and round-robin, two vLLM sites",
        "load_tool": "vllm bench serve (custom multi-turn dataset, Poisson arrivals)",
        "workload": {
            "documents": args.documents,
            "conversations_per_document": args.conversations,
            "turns": args.turns,
            "requests": prompts,
            "rate_per_s": args.rate,
            "cache_blocks_per_replica": args.cache_blocks,
        },
        "runs": runs,
        "target": "prefix-aware mean TTFT at least 30% lower than least-loaded, throughput "
        "no lower",
        "mean_ttft_prefix_aware_over_least_loaded": round(
            by["prefix-aware"]["mean_ttft_ms"] / by["least-loaded"]["mean_ttft_ms"], 3
        ),
    }
    if args.site_routers:
        inside = site_runs(args, workdir, load)
        routers = {run["router"]: run for run in inside}
        result["site_runs"] = inside
        result["mean_ttft_site_prefix_aware_over_power_of_two"] = round(
            routers["prefix-aware"]["mean_ttft_ms"] / routers["power-of-two"]["mean_ttft_ms"], 3
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
