"""The concurrency curve of arXiv 2508.17814: plain vLLM, the site, and the gateway in front.

First the yardstick: the tiny model under plain `vllm serve`, with the engine
arguments and environment of the embedded default's `tiny-llama`, measured
and stopped before any Ray process starts. Then `first gateway up` on the
embedded default (the local site colocated, the same model, held at one
replica). Each path gets `vllm bench serve` at 1, 2, 4 ... 128 concurrent
requests (`--max-concurrency`, no rate limit; `--quick`: 1, 4, 16, 64, 128
and fewer requests per level; from 64 up three runs, the median kept): through the gateway on Serve, through the
same gateway standalone (uvicorn) and directly at the site in turn (the
model's own route, where the gateway calls it, and the site's multi-model
/v1). Kept:
latency p50 and p99, time to first token and inter-token latency, requests
and tokens per second, and where the CPU went by role. Each path's best
throughput over plain vLLM's (and over the site's) is what our layers cost
when the engine is the bottleneck.

`python -m bench.concurrency_bench [--quick]`; part of `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

from bench.gateway_bench import (
    FIRST_KEY,
    Background,
    Target,
    log,
    start_serve_stack,
    wait_until_answering,
)
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


def shipped_model() -> dict:
    """`tiny-llama` as the embedded default ships it (cluster_configs/local.yaml)."""
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    return next(m for m in site["models"] if m["id"] == MODEL)


def engine_flags(engine_kwargs: dict) -> list[str]:
    """A model's engine_kwargs as `vllm serve` flags: the engine the site builds, unchanged."""
    flags = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def engine_threads() -> list[dict]:
    """How the running vLLM engines lay out their threads: the model worker (where the
    compute is) and the engine core: the cores each may run on and its threads. Ray sets
    OMP_NUM_THREADS from a replica's CPU reservation; this shows whether that changes
    the layout vLLM chooses under plain `vllm serve`."""
    layout = []
    for process in psutil.process_iter(["name"]):
        if not (process.info["name"] or "").startswith(("VLLM::Worker", "VLLM::EngineCor")):
            continue
        with contextlib.suppress(psutil.Error):
            environment = process.environ()
            layout.append(
                {
                    "process": process.info["name"],
                    "cpus": process.cpu_affinity(),
                    "threads": process.num_threads(),
                    # As the process was started (/proc/PID/environ): Ray sets it from the
                    # replica's CPUs; vLLM's worker binds its own OpenMP threads after.
                    "omp_num_threads_at_start": environment.get("OMP_NUM_THREADS"),
                }
            )
    return sorted(layout, key=lambda entry: entry["process"])


def start_plain_vllm(workdir: Path) -> tuple[Background, str]:
    """`vllm serve` of the shipped model with its engine arguments and environment."""
    model, port = shipped_model(), free_port()
    command = [
        sys.executable, "-m", "bench.vllm_cli", "serve", str(TINY_MODEL),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        *engine_flags(model["engine_kwargs"]),
    ]  # fmt: skip
    log(f"starting plain vLLM: {' '.join(command[2:])}")
    vllm = Background.start("vllm", command, workdir, env={**os.environ, **model.get("env", {})})
    url = f"http://127.0.0.1:{port}"
    ping = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    try:
        wait_until_answering(Target(f"{url}/v1/chat/completions", ping), 300, "plain vLLM")
    except BaseException:
        vllm.stop()
        raise
    return vllm, url


def stack_config(workdir: Path, ray_temp: str) -> Path:
    config = yaml.safe_load((REPO / "cluster_configs" / "local-federation.yaml").read_text())
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["models"] = [shipped_model() | {"source": str(TINY_MODEL)}]
    for workflow in ("tribunals", "rag"):  # over models this stack does not serve
        config.pop(workflow, None)
    # One engine, so that both paths meet the same one (a second replica would
    # share the same 2 cores and measure the machine, not the path).
    site["models"][0]["autoscaling"] = {"preset": "hot", "max_replicas": 1}
    config["sites"][0]["site"] = site
    config["gateway"]["port"] = free_port()
    # Serve's fast path (off by default: deployments.site_config.HAProxyConfig says why).
    config["gateway"]["ray"].update(
        dashboard_port=free_port(),
        metrics_export_port=free_port(),
        temp_dir=ray_temp,
        haproxy={"enabled": True},
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


def repeats_at(concurrency: int) -> int:
    """Runs per path at a level. From 64 up the engine, plain `vllm serve` too, settles
    in one of two regimes per run, small steps or large ones (one server, five runs of
    2,048 requests at 128: 106, 194, 211, 190 and 133 req/s), so the median of three
    runs is kept there."""
    return 3 if concurrency >= 64 else 1


def measure_levels(
    paths: dict[str, str], levels: list[int], per_level: int, workdir: Path
) -> list[dict]:
    """Warm each path up, then every level on every path in turn (so drift hits all alike);
    where a level is repeated, the run of median throughput stands for it."""
    for url in paths.values():
        vllm_bench_serve(url, MODEL, TINY_MODEL, workdir / "warm.json", *closed_loop(8, 32))
    runs = []
    for concurrency in levels:
        prompts = max(concurrency * per_level, 16)
        tries: dict[str, list[dict]] = {target: [] for target in paths}
        for attempt in range(repeats_at(concurrency)):
            for target, url in paths.items():
                out = workdir / f"{target}-{concurrency}-{attempt}.json"
                with cpu_use() as cpu:
                    raw = vllm_bench_serve(
                        url, MODEL, TINY_MODEL, out, *closed_loop(concurrency, prompts)
                    )
                run = {"path": target, "concurrency": concurrency, **latency_summary(raw)}
                run["cpu_s"] = cpu
                tries[target].append(run)
                log(
                    f"c={concurrency:<4} {target:<10} p50 {run['p50_e2el_ms']:7.1f} ms "
                    f"p99 {run['p99_e2el_ms']:7.1f} ms TTFT p50 {run['p50_ttft_ms']:6.1f} ms "
                    f"TPOT p50 {run['p50_tpot_ms']:5.1f} ms "
                    f"{run['requests_per_s']:6.1f} req/s {run['output_tokens_per_s']:7.1f} tok/s"
                )
        for target_runs in tries.values():
            ranked = sorted(target_runs, key=lambda r: r["output_tokens_per_s"])
            median = ranked[len(ranked) // 2]
            median["output_tokens_per_s_of_each_run"] = [
                r["output_tokens_per_s"] for r in target_runs
            ]
            runs.append(median)
    return runs


def measure_plain_vllm(
    levels: list[int], per_level: int, workdir: Path, threads: dict
) -> list[dict]:
    """The yardstick, stopped again before any Ray process starts."""
    vllm, url = start_plain_vllm(workdir)
    try:
        threads["vllm"] = engine_threads()
        return measure_levels({"vllm": url}, levels, per_level, workdir)
    finally:
        vllm.stop()


def measure_stack(
    path: Path, levels: list[int], per_level: int, workdir: Path, threads: dict
) -> list[dict]:
    """The gateway on Serve, the same gateway standalone, and the site, in one stack."""
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
        threads["site"] = engine_threads()
        site = load_federation(path).sites[0]
        paths = {"gateway": gateway_url, "standalone": standalone_url, "site": site.url}
        model = site.site_config.model(MODEL)
        if model in site.site_config.direct_models():
            # The site at its fastest, where the gateway calls it, and its multi-model /v1.
            paths |= {"site": site.url + site.site_config.model_route(model), "site_v1": site.url}
        return measure_levels(paths, levels, per_level, workdir)
    finally:
        for process in reversed(processes):
            process.stop()


def cpu_per_1k_tokens(run: dict) -> dict:
    tokens = run["completed"] * OUTPUT_TOKENS / 1000
    spent = {k: v for k, v in run["cpu_s"].items() if k not in ("wall_s", "cores", "idle")}
    return {role: round(seconds / tokens, 3) for role, seconds in spent.items() if seconds}


def summarise(runs: list[dict]) -> dict:
    """Each path at its own best concurrency (single levels are too noisy here) over plain
    vLLM's best and the site's best; latency at concurrency 1; CPU by role at vLLM's best."""
    by_path: dict[str, list[dict]] = {}
    for run in runs:
        by_path.setdefault(run["path"], []).append(run)
    best = {
        path: max(path_runs, key=lambda r: r["output_tokens_per_s"])
        for path, path_runs in by_path.items()
    }

    def over(path: str, yardstick: str) -> float:
        return round(best[path]["output_tokens_per_s"] / best[yardstick]["output_tokens_per_s"], 3)

    vllm_level = best["vllm"]["concurrency"]
    at_one = {r["path"]: r for r in runs if r["concurrency"] == 1}
    at_level = {r["path"]: r for r in runs if r["concurrency"] == vllm_level}
    return {
        "best": {
            path: {k: run[k] for k in ("concurrency", "requests_per_s", "output_tokens_per_s")}
            for path, run in best.items()
        },
        "best_vllm_concurrency": vllm_level,
        "throughput_over_vllm_at_best": {path: over(path, "vllm") for path in best},
        # The target's reading: each path at the level where plain vLLM peaks.
        "throughput_over_vllm_at_its_best_level": {
            path: round(
                at_level[path]["output_tokens_per_s"] / best["vllm"]["output_tokens_per_s"], 3
            )
            for path in at_level
        },
        "throughput_over_site_at_best": {
            path: over(path, "site") for path in best if path != "vllm"
        },
        # Inter-token latency as each request's mean gap (vLLM's TPOT): a chunk that
        # carries several tokens (Ray's stream batching, vLLM's own under load) gives
        # per-chunk ITL samples of 0, so ITL's median says nothing at concurrency 1.
        # A TPOT of 0 says the median request's tokens came in one piece with the first:
        # the stream did not stream, and the target cannot be met by it.
        "p50_tpot_ms_at_1": {path: run["p50_tpot_ms"] for path, run in at_one.items()},
        "p50_tpot_gateway_over_vllm_at_1": round(
            at_one["gateway"]["p50_tpot_ms"] / at_one["vllm"]["p50_tpot_ms"], 3
        ),
        # What a caller waits for a whole answer at 1, however its tokens were chunked.
        "p50_e2el_over_vllm_at_1": {
            path: round(run["p50_e2el_ms"] / at_one["vllm"]["p50_e2el_ms"], 3)
            for path, run in at_one.items()
        },
        # Where the CPU went at plain vLLM's best level, per 1,000 output tokens:
        # the engine's share is what a path leaves it on this machine's shared cores.
        "cpu_s_per_1k_tokens_at_best_vllm_level": {
            run["path"]: cpu_per_1k_tokens(run) for run in runs if run["concurrency"] == vllm_level
        },
    }


TARGETS = {
    "site_over_vllm": 0.8,
    "gateway_over_site": 0.9,
    "standalone_over_site": 0.95,
    "p50_tpot_gateway_over_vllm_at_1": 1.1,
}


def result_of(runs: list[dict], threads: dict) -> dict:
    """The result file's content: the runs, their summary, and which targets they meet."""
    summary = summarise(runs)
    ratios = summary["throughput_over_site_at_best"]
    tpot = summary["p50_tpot_gateway_over_vllm_at_1"]
    return {
        "what": "tiny-llama (vLLM CPU): plain vllm serve, the site, the gateway on Serve and "
        "standalone (HAProxy ingress, direct streaming), 1 to 128 concurrent",
        "load_tool": "vllm bench serve (random dataset, closed loop at --max-concurrency)",
        "request": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        "engine": shipped_model()["engine_kwargs"],
        "engine_threads": threads,
        "targets": TARGETS,
        "met": {
            "site_over_vllm": summary["throughput_over_vllm_at_its_best_level"]["site"]
            >= TARGETS["site_over_vllm"],
            "gateway_over_site": ratios["gateway"] >= TARGETS["gateway_over_site"],
            "standalone_over_site": ratios["standalone"] >= TARGETS["standalone_over_site"],
            "p50_tpot_gateway_over_vllm_at_1": 0
            < tpot
            <= TARGETS["p50_tpot_gateway_over_vllm_at_1"],
        },
        **summary,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/concurrency.json")
    parser.add_argument("--quick", action="store_true", help="Fewer requests per level.")
    parser.add_argument(
        "--from-runs",
        metavar="RESULT",
        help="Measure nothing: summarise the runs of an earlier result again (after a change "
        "to how they are read) and write it to --out.",
    )
    args = parser.parse_args()
    if args.from_runs:
        earlier = json.loads(Path(args.from_runs).read_text())
        result = result_of(earlier["runs"], earlier["engine_threads"])
        if "measured_on" in earlier:
            result["measured_on"] = earlier["measured_on"]
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out} from the runs of {args.from_runs}")
        return
    levels = [1, 4, 16, 64, 128] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    per_level = 2 if args.quick else 8  # requests per concurrent slot
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-concurrency-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    path = stack_config(workdir, ray_temp)
    os.environ["OPENAI_API_KEY"] = FIRST_KEY  # vllm bench serve sends it as the bearer token
    threads: dict[str, list[dict]] = {}
    try:
        runs = measure_plain_vllm(levels, per_level, workdir, threads)
        runs += measure_stack(path, levels, per_level, workdir, threads)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result_of(runs, threads), indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
