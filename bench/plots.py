"""PNG plots of the committed benchmark results: `python -m bench.plots` (after any bench run).

One function per result file; each reads bench/results/<name>.json and
writes bench/results/<name>.png. A missing result file is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def routing(result: dict, out: Path) -> None:
    """p50 and p99 time to first token per policy at each load (log scale)."""
    runs = result["runs"]
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    loads = sorted({r["load"] for r in runs})
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(policies)
    for axis, metric in zip(axes, ("p50_ttft_ms", "p99_ttft_ms"), strict=True):
        for i, policy in enumerate(policies):
            values = [
                next(r[metric] for r in runs if r["policy"] == policy and r["load"] == load)
                for load in loads
            ]
            axis.bar([x + i * width for x in range(len(loads))], values, width, label=policy)
        axis.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(loads))])
        axis.set_xticklabels([f"{load:.0%} of capacity" for load in loads])
        axis.set_yscale("log")
        axis.set_title(metric.replace("_ttft_ms", " time to first token"))
        axis.set_ylabel("ms")
    axes[0].legend()
    figure.suptitle("Placement across three sites of unequal speed (Poisson arrivals)")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def prefix(result: dict, out: Path) -> None:
    """Time to first token (mean, p50, p99) and output throughput per policy (and per
    replica router inside one site, when measured)."""
    runs = result["runs"] + result.get("site_runs", [])
    policies = [r["policy"] if "policy" in r else f"in-site\n{r['router']}" for r in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    metrics = ("mean_ttft_ms", "p50_ttft_ms", "p99_ttft_ms")
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        left.bar(
            [x + i * width for x in range(len(runs))],
            [r[metric] for r in runs],
            width,
            label=metric.replace("_ttft_ms", ""),
        )
    left.set_xticks([x + width for x in range(len(runs))])
    left.set_xticklabels(policies)
    left.set_ylabel("time to first token, ms")
    left.legend()
    right.bar(policies, [r["output_tokens_per_s"] for r in runs], color="tab:gray")
    right.set_ylabel("output tokens/s")
    figure.suptitle("Multi-turn chat over shared documents: two vLLM sites (and two replicas)")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


CONCURRENCY_PATHS = {
    "vllm": "plain vllm serve",
    "site": "straight to the site (the model's own route)",
    "site_v1": "the site's multi-model /v1",
    "gateway": "through the gateway on Serve",
    "standalone": "through the standalone gateway",
}


def concurrency(result: dict, out: Path) -> None:
    """Latency (through the gateway) and throughput (each path) against concurrent requests,
    as arXiv 2508.17814 plots them, and where the CPU went at plain vLLM's best level."""
    runs = sorted(
        (r for r in result["runs"] if r["path"] == "gateway"), key=lambda r: r["concurrency"]
    )
    x = [r["concurrency"] for r in runs]
    cpu = result["cpu_s_per_1k_tokens_at_best_vllm_level"]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4))
    left, right = axes[0], axes[1]
    for metric, label in (
        ("p50_e2el_ms", "p50 latency"),
        ("p99_e2el_ms", "p99 latency"),
        ("p50_ttft_ms", "p50 time to first token"),
    ):
        left.plot(x, [r[metric] for r in runs], marker="o", label=label)
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent requests")
    left.set_ylabel("ms")
    left.legend()
    for key, label in CONCURRENCY_PATHS.items():
        path_runs = sorted(
            (r for r in result["runs"] if r["path"] == key), key=lambda r: r["concurrency"]
        )
        right.plot(
            [r["concurrency"] for r in path_runs],
            [r["output_tokens_per_s"] for r in path_runs],
            marker="o",
            label=label,
        )
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent requests")
    right.set_ylabel("output tokens/s")
    right.legend()
    cpu_use(axes[2], cpu, result["best_vllm_concurrency"])
    figure.suptitle(result.get("what", "Concurrency"))
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def cpu_use(axes: plt.Axes, cpu: dict, level: int) -> None:
    """Stacked CPU seconds per 1,000 output tokens by role, one bar per path."""
    paths = list(cpu)
    roles = list(dict.fromkeys(role for path in paths for role in cpu[path]))
    bottom = [0.0] * len(paths)
    for role in roles:
        heights = [cpu[path].get(role, 0.0) for path in paths]
        axes.bar(paths, heights, bottom=bottom, label=role.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_ylabel(f"CPU s per 1,000 output tokens, {level} concurrent")
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


PLOTS: dict[str, Callable[[dict, Path], None]] = {
    "routing": routing,
    "prefix": prefix,
    "concurrency": concurrency,
}


def main() -> None:
    for name, plot in PLOTS.items():
        source = RESULTS / f"{name}.json"
        if source.exists():
            plot(json.loads(source.read_text()), RESULTS / f"{name}.png")
            print(f"wrote {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
