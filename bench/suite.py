"""One harness for the benchmarks: run them, plot them, and check every target in one table.

`make bench` (quick: routing, prefix-aware routing, the concurrency curve,
overload and bulk requests, about 12 minutes here) and `make bench-full`
(those at full length, plus the gateway against LiteLLM, cold start on
Slurm, batch against interactive and the metrics' cost). Each benchmark writes its JSON under
bench/results/; this stamps each with the machine and commit it ran on, draws the PNG plots
(bench/plots.py) and rewrites the summary table at the top of
bench/README.md from every result present, run now or committed earlier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import plots

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"
AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


@dataclass(frozen=True)
class Suite:
    name: str  # bench/<module>.py and results/<result>.json
    module: str
    quick_args: tuple[str, ...] | None  # None: only in the full run
    full_args: tuple[str, ...] = ()


SUITES = (
    Suite("routing", "bench.routing_bench", ("--quick",)),
    Suite("prefix", "bench.prefix_bench", ("--quick",), ("--site-routers",)),
    Suite("concurrency", "bench.concurrency_bench", ("--quick",)),
    Suite("site_options", "bench.site_options_bench", None),
    Suite("gateway", "bench.gateway_bench", None, ("--ingress", "haproxy")),
    Suite("cold_start", "bench.cold_start_bench", None),
    Suite("batch", "bench.batch_bench", None),
    Suite("metrics", "bench.metrics_bench", None),
    Suite("request_cost", "bench.request_cost_bench", None),
    Suite("agent_apis", "bench.agent_apis_bench", None),
    Suite("transports", "bench.transports_bench", None),
    Suite("overload", "bench.overload_bench", ("--quick",)),
    Suite("bulk", "bench.bulk_bench", ("--quick",)),
    Suite("tribunal", "bench.tribunal_bench", ("--quick",)),
    Suite("rag", "bench.rag_bench", ("--quick",)),
)


def machine(autogroup: bool | None) -> dict:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "sched_autogroup": autogroup,
    }


@contextlib.contextmanager
def without_autogroup() -> Iterator[bool | None]:
    """Linux's autogroup scheduling off while a benchmark runs, where this may turn it off.

    With autogroup on, the kernel shares busy CPUs between sessions, not
    processes: each `start_new_session` process (the load generator, `vllm
    serve`, `first gateway up` and the Ray cluster it starts, HAProxy) gets one
    share. The engine's busy-polling threads then starve the server in their own
    session: plain `vllm serve` delivered 38 of 40 streams at concurrency 1 in
    one piece (first byte 70 ms, where it is 9 ms with autogroup off), and the
    paths under comparison each got a different share of the two cores. GPU
    nodes rarely contend for CPU, where this does not matter. Yields whether
    autogroup was on during the run (None: the kernel has no such switch).
    """
    try:
        before = AUTOGROUP.read_text().strip()
    except OSError:
        yield None
        return
    if before == "0":
        yield False
        return
    try:
        AUTOGROUP.write_text("0")
    except OSError:
        print("[bench] autogroup scheduling is on and cannot be turned off here "
              "(not root): paths share the CPUs by session", flush=True)  # fmt: skip
        yield True
        return
    try:
        yield False
    finally:
        AUTOGROUP.write_text(before)


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    )
    # Results and this README change as the suite runs; only code counts.
    changed = ["git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results", ":!bench/README.md"]
    dirty = subprocess.run(changed, cwd=BENCH.parent).returncode != 0
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def run(suite: Suite, full: bool) -> None:
    out = RESULTS / f"{suite.name}.json"
    args = suite.full_args if full or suite.quick_args is None else suite.quick_args
    print(f"[bench] {suite.name}: python -m {suite.module} {' '.join(args)}", flush=True)
    started = time.monotonic()
    with without_autogroup() as autogroup:
        subprocess.run([sys.executable, "-m", suite.module, "--out", str(out), *args], check=True)
    result = json.loads(out.read_text())
    result["measured_on"] = {
        "machine": machine(autogroup),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "took_s": round(time.monotonic() - started),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _routing(r: dict) -> tuple[str, bool]:
    ratio = r["least_loaded_vs_round_robin_p99_ttft_at_80"]
    return f"round-robin p99 TTFT / least-loaded at 80% load: {ratio:.1f}x", ratio >= 2


def _prefix(r: dict) -> tuple[str, bool]:
    by = {run["policy"]: run for run in r["runs"]}
    ratio = r["mean_ttft_prefix_aware_over_least_loaded"]
    tokens = by["prefix-aware"]["output_tokens_per_s"] / by["least-loaded"]["output_tokens_per_s"]
    text = f"mean TTFT {1 - ratio:.0%} lower than least-loaded; throughput {tokens:.2f}x"
    inside = r.get("mean_ttft_site_prefix_aware_over_power_of_two")
    if inside is not None:
        text += f"; inside a site, Serve's prefix router {1 - inside:.0%} lower than its default"
    return text, ratio <= 0.7 and tokens >= 0.98


def _gateway(r: dict) -> tuple[str, bool]:
    """The Serve-hosted ingress adds less than LiteLLM's proxy, p50 and p99, at every level;
    the standalone one at most 1.5x a bare uvicorn + httpx forwarder (when measured)."""
    added = r["added_latency_ms"]
    cells = {key: cell for key, cell in added.items() if key.startswith("fixed-")}
    above = [
        f"{key.removeprefix('fixed-')} {q.removesuffix('_ms')} "
        f"({c['gateway-serve'][q]:.1f} vs {c['litellm'][q]:.1f} ms)"
        for key, c in cells.items()
        for q in ("p50_ms", "p99_ms")
        if c["gateway-serve"][q] >= c["litellm"][q]
    ]
    below = not above
    ratios = [
        c["gateway-standalone"][q] / c["bare-forwarder"][q]
        for c in cells.values()
        for q in ("p50_ms", "p99_ms")
        if "bare-forwarder" in c and c["bare-forwarder"][q] > 0
    ]
    ingress = {"haproxy": " (HAProxy)", "proxy": " (Python proxy)"}.get(r.get("serve_ingress"), "")
    text = f"Serve ingress{ingress} below LiteLLM at 1, 32, 128: " + (
        "yes" if below else "not at " + ", ".join(above)
    )
    rates = r.get("sustained_requests_per_s", {})
    if rates:
        text += "; sustained req/s (fixed backend, <1% errors): " + ", ".join(
            f"{key.removeprefix('fixed-')} {value:.0f}"
            for key, value in rates.items()
            if key.startswith("fixed-")
        )
    if ratios:
        text += f"; standalone / bare forwarder added p50, p99 at most {max(ratios):.2f}x"
    else:
        text += "; bare forwarder not measured"
    return text, below and bool(ratios) and max(ratios) <= 1.5


def _concurrency(r: dict) -> tuple[str, bool]:
    over_vllm = r["throughput_over_vllm_at_its_best_level"]
    over_site = r["throughput_over_site_at_best"]
    text = (
        f"site {over_vllm['site']:.2f}x plain vLLM's best tokens/s (at its level, "
        f"{r['best_vllm_concurrency']}); gateway on Serve "
        f"{over_site['gateway']:.2f}x the site, standalone {over_site['standalone']:.2f}x; "
        f"inter-token latency (TPOT p50) at 1 {r['p50_tpot_gateway_over_vllm_at_1']:.2f}x vLLM's"
    )
    if r["p50_tpot_gateway_over_vllm_at_1"] == 0:
        text += " (the median stream came in one piece)"
    if "p50_e2el_over_vllm_at_1" in r:
        text += f", a whole answer {r['p50_e2el_over_vllm_at_1']['gateway']:.2f}x"
    return text, all(r["met"].values())


def _cold_start(r: dict) -> tuple[str, bool]:
    median = r["summary"]["cold_median"]["request_to_first_token_s"]
    hot = r["summary"]["running_model_median"]["hot_over_steady"]
    text = f"cold start median {median:.0f} s; hot first token {hot:.2f}x steady"
    return text, median < 60 and hot <= 1.1


def _batch(r: dict) -> tuple[str, bool]:
    ratio = r["summary"]["batch_over_interactive"]
    return f"batch {ratio:.2f}x the best interactive throughput", ratio >= 1


def _metrics(r: dict) -> tuple[str, bool]:
    worst = min(v["median"] for v in r["throughput_ratio_on_over_off"].values())
    return f"metrics on at least {worst:.3f}x of off", worst >= 0.97


def _request_cost(r: dict) -> tuple[str, bool]:
    added = r["added_p50_ms"]["c1"]["median_ms"]
    text = f"token reservation and cache salting add {added:.3f} ms p50 at concurrency 1"
    return text, added < r["target_ms"]


AGENT_APIS = {"responses": "responses", "responses-stored": "stored", "messages": "messages"}


def _agent_apis(r: dict) -> tuple[str, bool]:
    levels = []
    for level, by_mode in r["added_p50_ms"].items():
        whole, streamed = by_mode["non_streamed"], by_mode["streamed"]
        apis = ", ".join(
            f"{name} {whole[api]['p50_ms']:+.2f} / {streamed[api]['p50_ms']:+.2f} ms"
            for api, name in AGENT_APIS.items()
        )
        levels.append(f"at {level.removeprefix('c')}: {apis}")
    text = "p50 added over chat, not streamed / streamed: " + "; ".join(levels)
    return text, r["met"]


def _agent_apis_table(r: dict) -> str:
    """Every cell of the agent APIs benchmark, with its p50 added over chat."""
    rows = [
        "| concurrent, mode | API | p50 / p99 ms | p50 added over chat, ms (median of rounds) "
        "| first byte p50 ms | gateway CPU ms a request | requests (failed) |",
        "| --- " * 7 + "|",
    ]
    for cell in r["cells"]:
        level, mode = cell["concurrency"], cell["mode"]
        added = r["added_p50_ms"][f"c{level}"][mode].get(cell["api"])
        more = f"{added['p50_ms']:+.3f} ({added['median_of_rounds_ms']:+.3f})" if added else "-"
        first = f"{cell['first_byte_p50_ms']:.2f}" if mode == "streamed" else "-"
        rows.append(
            f"| {level}, {mode.replace('_', '-')} | {cell['api']} | {cell['p50_ms']:.2f} / "
            f"{cell['p99_ms']:.2f} | {more} | {first} | {cell['gateway_cpu_ms_per_request']:.2f} "
            f"| {cell['requests']:,} ({cell['failed']}) |"
        )
    return "\n".join(rows)


def _transports(r: dict) -> tuple[str, bool]:
    at_1, at_32 = r["added_over_direct_ms"]["c1"], r["added_over_direct_ms"]["c32"]
    rates = r["requests_per_s_over_direct"]["c32"]
    rate = {c["path"]: c["requests_per_s"] for c in r["cells"] if c["concurrency"] == 32}
    tunnel, compute = at_1["non_streamed"]["tunnel"], at_1["non_streamed"]["compute"]
    text = (
        f"ssh-tunnel {tunnel['p50_ms']:+.2f} ms p50 over direct at 1 (a stream's first byte "
        f"{at_1['streamed']['tunnel']['first_byte_p50_ms']:+.2f} ms), "
        f"{rates['tunnel']['ratio']:.2f}x direct's req/s at 32 ({rate['tunnel']:.0f} against "
        f"{rate['direct']:.0f}); globus-compute through the endpoint engine "
        f"{compute['p50_ms']:+.1f} ms p50 at 1, {at_32['non_streamed']['compute']['p50_ms']:+.0f} "
        f"ms at 32, {rates['compute']['ratio']:.2f}x direct's req/s, beside FIRST's published "
        f"+{'-'.join(str(s) for s in r['first_globus_cloud_added_s'])} s a request through the "
        f"Globus cloud (not measurable here); direct {-at_1['non_streamed']['site']['p50_ms']:+.2f} "
        "ms over the site alone"
    )
    failed = sum(c["failed"] for c in r["cells"])
    text += f"; {failed} requests failed" if failed else ""
    return text, all(r["met"].values())


def _transports_table(r: dict) -> str:
    """Every cell of the transports benchmark, with its p50 added over direct."""
    rows = [
        "| concurrent, mode | path | p50 / p99 ms | p50 added over direct, ms (median of rounds) "
        "| first byte p50 / p99 ms | req/s | gateway CPU ms a request | carrier CPU ms a request "
        "| requests (failed) |",
        "| --- " * 9 + "|",
    ]
    for cell in r["cells"]:
        level, mode = cell["concurrency"], cell["mode"]
        added = r["added_over_direct_ms"][f"c{level}"][mode].get(cell["path"])
        more = f"{added['p50_ms']:+.3f} ({added['median_of_rounds_ms']:+.3f})" if added else "-"
        first = "-"
        if mode == "streamed":
            first = f"{cell['first_byte_p50_ms']:.2f} / {cell['first_byte_p99_ms']:.2f}"
        rows.append(
            f"| {level}, {mode.replace('_', '-')} | {cell['path']} | {cell['p50_ms']:.2f} / "
            f"{cell['p99_ms']:.2f} | {more} | {first} | {cell['requests_per_s']:.1f} | "
            f"{cell['gateway_cpu_ms_per_request']:.2f} | {cell['carrier_cpu_ms_per_request']:.2f} "
            f"| {cell['requests']:,} ({cell['failed']}) |"
        )
    return "\n".join(rows)


def _overload(r: dict) -> tuple[str, bool]:
    target, rss = r["target"], r["gateway_rss_mib"]
    loads = "; ".join(
        f"{run['load']:g}x: goodput {run['goodput_requests_per_s']:.1f} req/s, "
        f"{run['share']['429'] + run['share']['503']:.0%} refused, "
        f"refusals p99 {run['latency_refused'].get('p99_ms', 0):.1f} ms"
        for run in r["runs"]
    )
    text = (
        f"capacity {r['yardstick']['goodput_requests_per_s']:.1f} req/s; {loads}; "
        f"gateway RSS {rss['before']:.0f} → {rss['after']:.0f} MiB ({r['rss_growth']:+.1%})"
    )
    if not r["every_refusal_had_retry_after"]:
        text += "; some refusals lacked Retry-After"
    met = (
        r["refusal_p99_ms_worst"] < target["refusal_p99_ms"]
        and r["rss_growth"] <= target["rss_growth_max"]
        and r["every_refusal_had_retry_after"]
    )
    return text, met


def _bulk(r: dict) -> tuple[str, bool]:
    best = next(
        level for level in r["levels"] if level["concurrency"] == r["best_separate_concurrency"]
    )
    shares = ", ".join(f"{site} {share:.0%}" for site, share in r["bulk_site_share"].items())
    text = (
        f"{r['conversations']} conversations: one bulk request (bulk.concurrency "
        f"{r['bulk_concurrency_compared']}) {best['bulk']['wall_s']:.2f} s, "
        f"{r['bulk_wall_over_best_separate']:.2f}x the wall time of separate requests at their "
        f"best concurrency ({r['best_separate_concurrency']}, {best['separate']['wall_s']:.2f} s); "
        f"bulk's conversations by site: {shares}"
    )
    if r.get("quick"):
        text += " (quick)"
    return text, all(r["met"].values())


def _tribunal(r: dict) -> tuple[str, bool]:
    rows = []
    for t in r["tribunals"]:
        over, share = t["overhead"], t["overhead_fraction"]
        direct = t["overhead_over_direct_fraction"]
        rows.append(
            f"{t['rounds']} round{'s' if t['rounds'] > 1 else ''}: wall p50 "
            f"{t['wall']['p50_ms']:,.0f} ms, overhead p50 {over['p50_ms']:.1f} ms "
            f"({share['p50']:.1%} of its model calls' critical path), p99 {over['p99_ms']:.1f} ms "
            f"({share['p99']:.1%}); wall time {direct['p50']:+.1%} against the client making the "
            f"same calls through the gateway"
        )
    failed = sum(t["failed"] + t["direct"]["failed"] for t in r["tribunals"])
    text = "; ".join(rows) + (f"; {failed} requests failed" if failed else "")
    if r.get("quick"):
        text += " (quick)"
    return text, all(r["met"].values())


def _rag(r: dict) -> tuple[str, bool]:
    docs = next(run for run in r["docs"] if run["collection"] == r["docs_median"])
    corpus = r["corpus"]
    halves = corpus["chunks_per_s_by_half"]
    asked = next(run for run in r["queries"] if run["collection"] == corpus["collection"])
    shares = ", ".join(f"{site} {share:.0%}" for site, share in corpus["embedding_share"].items())
    text = (
        f"ingestion: docs/ ({docs['chunks']} chunks) {docs['chunks_per_s']:,.0f} chunks/s, its "
        f"embedding calls alone {docs['embeddings_alone']['chunks_per_s']:,.0f}; a "
        f"{corpus['chunks']:,}-chunk corpus {corpus['chunks_per_s']:,.0f} chunks/s (first half "
        f"{halves[0]:,.0f}, second {halves[-1]:,.0f}), embeddings alone "
        f"{corpus['embeddings_alone']['chunks_per_s']:,.0f}; its embedding requests by site: "
        f"{shares}; questions on the corpus, p50 / p99: retrieval {asked['search']['p50_ms']:.0f} "
        f"/ {asked['search']['p99_ms']:.0f} ms (the question's embedding alone "
        f"{asked['query_embedding']['p50_ms']:.0f} ms p50), generation {asked['generation']['p50_ms']:.0f} / "
        f"{asked['generation']['p99_ms']:.0f} ms"
    )
    met = r["met"]["completed_without_errors"]
    text += "; every request succeeded" if met else "; some requests failed"
    if r.get("quick"):
        text += " (quick)"
    return text, met


CHECKS: dict[str, tuple[str, Callable[[dict], tuple[str, bool]]]] = {
    "gateway": (
        "ingress added latency below LiteLLM; standalone ≤ 1.5x a bare forwarder",
        _gateway,
    ),
    "routing": ("least-loaded p99 TTFT ≥ 2x lower than round-robin at 80%", _routing),
    "prefix": ("prefix-aware mean TTFT ≥ 30% lower than least-loaded", _prefix),
    "concurrency": (
        "site ≥ 0.8x plain vLLM; stack on Serve ≥ 0.9x the site, standalone ≥ 0.95x; "
        "inter-token latency p50 at 1 within 10% of vLLM's",
        _concurrency,
    ),
    "cold_start": ("cold start under 60 s, hot within 10% of steady", _cold_start),
    "batch": ("batch at least as fast as interactive", _batch),
    "metrics": ("metrics cost within 3%", _metrics),
    "request_cost": (
        "token reservation and cache salting under 0.2 ms p50 at concurrency 1",
        _request_cost,
    ),
    "agent_apis": (
        "Responses (store off and on) and Messages under 1 ms p50 added over the same chat "
        "completion at concurrency 1, streamed and not (standalone gateway)",
        _agent_apis,
    ),
    "transports": (
        "ssh-tunnel under 2 ms p50 added over direct at concurrency 1 and at least 0.9x its "
        "req/s at 32; globus-compute (endpoint engine, no cloud) recorded beside FIRST's "
        "published +6-7 s a request",
        _transports,
    ),
    "overload": (
        "at 2x and 5x capacity, refusals (429/503, with Retry-After) p99 under 50 ms; "
        "gateway RSS after within 10% of before",
        _overload,
    ),
    "bulk": (
        "one bulk request no slower than the same conversations as separate requests at their "
        "best concurrency; each of two sites 40-60% of the bulk's conversations",
        _bulk,
    ),
    "tribunal": (
        "a tribunal's overhead (client wall time less its model calls' critical path) p50 "
        "under 5% of that path, at 1 and 2 rounds",
        _tribunal,
    ),
    "rag": (
        "recorded (no target): ingestion chunks/s against its embedding calls alone, their "
        "spread over two sites, retrieval and generation p50/p99; met means no request failed",
        _rag,
    ),
}


def summary_table() -> str:
    rows = ["| benchmark | target | measured | met | machine, commit, date |", "| --- " * 5 + "|"]
    for name, (target, check) in CHECKS.items():
        result = _load(name)
        if result is None:
            continue
        try:
            measured, met = check(result)
        except (KeyError, StopIteration, ZeroDivisionError) as exc:
            measured, met = f"result lacks {exc}", False
        stamp = result.get("measured_on")
        where = (
            f"{stamp['machine']['cpus']} CPUs, {stamp['machine']['memory_gib']} GiB, "
            f"{stamp['commit']}, {stamp['date']}"
            if stamp
            else "before the harness (see its section)"
        )
        link = f"[{name}](results/{name}.json)"
        rows.append(f"| {link} | {target} | {measured} | {'yes' if met else '**no**'} | {where} |")
    return "\n".join(rows)


# A benchmark's own table in its README section, between `<!-- NAME:start -->` and
# `<!-- NAME:end -->`, written from its result as the summary is.
TABLES: dict[str, Callable[[dict], str]] = {
    "agent_apis": _agent_apis_table,
    "transports": _transports_table,
}


def _with_tables(text: str) -> str:
    for name, render in TABLES.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        result = _load(name)
        if result is None or start not in text:
            continue
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{render(result)}\n{end}{rest.split(end, 1)[1]}"
    return text


def write_summary() -> None:
    text = README.read_text()
    table = f"{START}\n{summary_table()}\n{END}"
    if START in text:
        head, rest = text.split(START, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{table}\n{body}"
    README.write_text(_with_tables(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Every benchmark, at full length.")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SUITES], default=None)
    args = parser.parse_args()
    for suite in SUITES:
        chosen = suite.name in args.only if args.only else args.full or suite.quick_args
        if chosen:
            run(suite, args.full)
    plots.main()
    write_summary()
    print(f"[bench] summary written to {README}")


if __name__ == "__main__":
    main()
