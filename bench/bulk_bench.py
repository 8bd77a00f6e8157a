"""Bulk chat completions: one request of many conversations against as many separate ones.

Two simulated sites (bench/README.md), east and west, serve the same model
with the same timing on one Serve-hosted stack, so the federation's
capacity in requests per second follows from it (`CAPACITY_RPS`, both
sites). A standalone gateway (open, no rate limits, least-loaded placement)
fronts them. The same `--conversations` short conversations (512; 128 with
`--quick`), each answered with exactly `OUTPUT_TOKENS` tokens, go through it
two ways, from an aiohttp client in this process:

- separate: one `POST /v1/chat/completions` per conversation, a closed loop
  of `concurrency` clients each sending the next when its last is answered;
- bulk: the whole list as one `POST /v1/chat/completions/batch` (vLLM's
  shape), the gateway running `bulk.concurrency` of them at once.

For each level of `--concurrency` (16, 32, 64, 128; 32 and 64 with
`--quick`) a gateway starts with `bulk.concurrency` at that level, so both
ways hold as many conversations in flight, and `--repeats` rounds of both
run alternately (the median run by wall time stands). The separate run at
its best level is the yardstick; the bulk run with `bulk.concurrency` at
that same level is compared with it. Reported per run: wall time,
completion tokens and conversations per second, failures, latency of the
separate requests, where the CPU went, and how many conversations each site
answered (the gateway's `first_requests_total` by site, read before and
after the run). Targets: the bulk request's wall time at most the best
separate run's; each site's share of the bulk's conversations in [0.4, 0.6].

`python -m bench.bulk_bench [--quick]`; `make bench-bulk`; part of `make bench`
(quick) and `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.gateway_bench import Target, log, wait_until_answering
from bench.harness import (
    requests_by_site,
    running_stack,
    simulated_model,
    sites_stack,
    standalone_gateway,
)
from bench.overload_bench import cpu_of_roles, latency
from tests.support.processes import FirstProcess, start_standalone_gateway

MODEL = "sim-bulk"
SITES = ("east", "west")
OUTPUT_TOKENS = 16
TTFT_MS, TPOT_MS, MAX_NUM_SEQS = 100.0, 20.0, 16
# Both sites with every slot busy, each request holding one for all its tokens.
CAPACITY_RPS = len(SITES) * MAX_NUM_SEQS / ((TTFT_MS + (OUTPUT_TOKENS - 1) * TPOT_MS) / 1000)
CONCURRENCY, QUICK_CONCURRENCY = (16, 32, 64, 128), (32, 64)
CONVERSATIONS, QUICK_CONVERSATIONS = 512, 128
REPEATS = 3
WALL_RATIO_TARGET = 1.0  # bulk wall time over the best separate run's, at most
SHARE_RANGE = (0.4, 0.6)  # each site's share of the bulk's conversations
CHAT, BULK = "/v1/chat/completions", "/v1/chat/completions/batch"
TIMEOUT_S = 600


def site(name: str) -> dict:
    return {
        "name": name,
        "models": [simulated_model(MODEL, TTFT_MS, TPOT_MS, MAX_NUM_SEQS)],
    }


def conversations(count: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Question {i}: what is {i} + {i}, in one short line?"}]
        for i in range(count)
    ]


def body(messages: list) -> dict:
    return {"model": MODEL, "messages": messages, "max_tokens": OUTPUT_TOKENS}


async def answered_by_site(session: aiohttp.ClientSession, base: str) -> Counter:
    return await requests_by_site(session, base, MODEL, CHAT)


async def send(session: aiohttp.ClientSession, url: str, messages: list) -> tuple[int, float, int]:
    """One chat completion: its status (0: no HTTP answer), latency in ms and tokens."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body(messages)) as response:
            answer = await response.json(content_type=None)
            status = response.status
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return 0, (time.perf_counter() - started) * 1000, 0
    tokens = answer["usage"]["completion_tokens"] if status == 200 else 0
    return status, (time.perf_counter() - started) * 1000, tokens


async def separate(session, base: str, items: list, concurrency: int) -> dict:
    """Every conversation as its own request, `concurrency` clients in a closed loop."""
    answers: list[tuple[int, float, int]] = []
    queue = iter(items)

    async def client() -> None:
        for messages in queue:  # shared: each client takes the next conversation
            answers.append(await send(session, f"{base}{CHAT}", messages))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    statuses = Counter(status for status, _, _ in answers)
    return {
        "wall_s": round(wall_s, 3),
        "failed": len(answers) - statuses[200],
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "completion_tokens": sum(tokens for _, _, tokens in answers),
        "latency": latency([ms for status, ms, _ in answers if status == 200]),
    }


async def bulk(session, base: str, items: list) -> dict:
    """Every conversation in one bulk request."""
    started = time.perf_counter()
    async with session.post(f"{base}{BULK}", json=body(items)) as response:
        answer = await response.json(content_type=None)
        status = response.status
    wall_s = time.perf_counter() - started
    if status != 200:
        raise SystemExit(f"the bulk request got HTTP {status}: {str(answer)[:500]}")
    errors = Counter(
        c["error"]["code"] or c["error"]["type"] for c in answer["choices"] if c.get("error")
    )
    in_order = [c["index"] for c in answer["choices"]] == list(range(len(items)))
    return {
        "wall_s": round(wall_s, 3),
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "choices_in_order": in_order,
        "completion_tokens": answer["usage"]["completion_tokens"],
    }


async def one_run(session, base: str, items: list, way: str, concurrency: int) -> dict:
    """One run of `way` (separate or bulk), with its rates, CPU and spread over the sites."""
    before = await answered_by_site(session, base)
    with cpu_of_roles() as cpu:
        if way == "separate":
            run = await separate(session, base, items, concurrency)
        else:
            run = await bulk(session, base, items)
    after = await answered_by_site(session, base)
    # Every site label the counter grew under ("none": refused before a site was chosen);
    # the shares are of what the two sites answered.
    by_site = {name: int(after[name] - before[name]) for name in sorted(after | before)}
    served = max(sum(by_site.get(name, 0) for name in SITES), 1)
    run |= {
        "conversations": len(items),
        "completion_tokens_per_s": round(run["completion_tokens"] / run["wall_s"], 1),
        "requests_per_s": round(len(items) / run["wall_s"], 2),
        "by_site": by_site,
        "share": {name: round(by_site.get(name, 0) / served, 3) for name in SITES},
        "cpu_s": cpu,
    }
    log(
        f"{way:<8} at {concurrency:>3}: {run['wall_s']:6.2f} s, {run['requests_per_s']:6.1f} "
        f"conversations/s, {run['completion_tokens_per_s']:7.1f} tok/s, {run['failed']} failed, "
        f"by site {by_site}"
    )
    return run


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (of an even count, the faster middle one)."""
    wall = statistics.median_low(run["wall_s"] for run in runs)
    return next(run for run in runs if run["wall_s"] == wall)


async def measure_level(base: str, items: list, concurrency: int, repeats: int) -> dict:
    """Warm up, then `repeats` rounds of both ways, alternating which goes first."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        warm = items[:concurrency]
        await separate(session, base, warm, concurrency)  # connections and code paths
        await bulk(session, base, warm)
        runs: dict[str, list[dict]] = {"separate": [], "bulk": []}
        for repeat in range(repeats):
            ways = ("separate", "bulk") if repeat % 2 == 0 else ("bulk", "separate")
            for way in ways:
                runs[way].append(await one_run(session, base, items, way, concurrency))
    return {
        "concurrency": concurrency,
        "bulk_concurrency": concurrency,
        **{
            way: {**median_run(done), "runs_wall_s": [r["wall_s"] for r in done]}
            for way, done in runs.items()
        },
    }


def start_gateway(
    stack: Path, workdir: Path, concurrency: int, items: int
) -> tuple[FirstProcess, str]:
    """The standalone gateway under test: open, no limits, `bulk.concurrency` at `concurrency`."""
    config = standalone_gateway(
        stack,
        workdir,
        auth={"required": False},
        bulk={"max_items": max(items, 512), "concurrency": concurrency},
    )
    return start_standalone_gateway(
        config,
        workdir / f"federation-bulk-{concurrency}.yaml",
        f"bulk-{concurrency}",
        timeout_s=120,
    )


def verdict(levels: list[dict]) -> dict:
    """The best separate level (of those without failures, if any), the bulk run at that
    level against it, and the sites' shares of that bulk run."""
    clean = [level for level in levels if level["separate"]["failed"] == 0] or levels
    best = min(clean, key=lambda level: level["separate"]["wall_s"])
    best_bulk = min(levels, key=lambda level: level["bulk"]["wall_s"])
    ratio = best["bulk"]["wall_s"] / best["separate"]["wall_s"]
    share = best["bulk"]["share"]
    shares = [value for level in levels for value in level["bulk"]["share"].values()]
    low, high = SHARE_RANGE
    return {
        "best_separate_concurrency": best["concurrency"],
        "bulk_concurrency_compared": best["bulk_concurrency"],
        "best_bulk_concurrency": best_bulk["bulk_concurrency"],
        "bulk_wall_over_best_separate": round(ratio, 3),
        "best_bulk_wall_over_best_separate": round(
            best_bulk["bulk"]["wall_s"] / best["separate"]["wall_s"], 3
        ),
        "bulk_site_share": share,
        "bulk_site_share_range_over_levels": [min(shares), max(shares)],
        "met": {
            "bulk_as_fast_as_separate": ratio <= WALL_RATIO_TARGET,
            "even_share": all(low <= value <= high for value in share.values()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/bulk.json")
    parser.add_argument(
        "--quick", action="store_true", help="128 conversations, 32 and 64 concurrent only."
    )
    parser.add_argument("--conversations", type=int, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    count = args.conversations or (QUICK_CONVERSATIONS if args.quick else CONVERSATIONS)
    levels_asked = args.concurrency or list(QUICK_CONCURRENCY if args.quick else CONCURRENCY)
    items = conversations(count)
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-bulk-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    stack = sites_stack(workdir, ray_temp, [site(name) for name in SITES])
    log(f"starting two simulated sites ({CAPACITY_RPS:.1f} req/s in all), workdir {workdir}")
    levels = []
    with running_stack(stack, workdir, ray_temp, 600):
        for concurrency in levels_asked:
            gateway, url = start_gateway(stack, workdir, concurrency, count)
            try:
                wait_until_answering(Target(f"{url}{CHAT}", body(items[0])), 120, "the gateway")
                levels.append(asyncio.run(measure_level(url, items, concurrency, args.repeats)))
            finally:
                gateway.stop()
    result = {
        "what": "one bulk chat completion request against as many separate ones, two sites",
        "quick": args.quick,
        "conversations": count,
        "sites": {
            "names": list(SITES),
            "ttft_ms": TTFT_MS,
            "tpot_ms": TPOT_MS,
            "max_num_seqs": MAX_NUM_SEQS,
            "capacity_rps": round(CAPACITY_RPS, 2),
            "best_wall_s": round(count / CAPACITY_RPS, 2),
        },
        "gateway": {"standalone": True, "placement": "least-loaded", "limits": None},
        "request": {"stream": False, "max_tokens": OUTPUT_TOKENS},
        "load": {
            "tool": "aiohttp, closed loop (separate); one request (bulk)",
            "repeats": args.repeats,
        },
        "target": {
            "bulk_wall_over_best_separate_max": WALL_RATIO_TARGET,
            "site_share": list(SHARE_RANGE),
        },
        "levels": levels,
        **verdict(levels),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
