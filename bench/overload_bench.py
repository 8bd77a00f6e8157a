"""Overload: offered load past capacity, and how the gateway refuses what it cannot serve.

One simulated site (bench/README.md) runs on a Serve-hosted stack; one
standalone gateway fronts it with no rate limits and the site's
`max_in_flight` at twice the engine's `max_num_seqs`, so that once the
engine's slots and as many places in its queue are taken the gateway
answers 503 with Retry-After at once instead of queueing. The site's
capacity in requests per second follows from its timing (`CAPACITY_RPS`);
a closed loop at `max_in_flight` concurrent requests (the engine never
idle) measures it first, as the yardstick. Then an open-loop generator in this process (aiohttp,
Poisson arrivals, non-streaming chat completions of `OUTPUT_TOKENS`)
offers 2x and 5x that capacity for `--duration-s` each. Reported per load:
the rate offered, sent and answered, goodput (200s and completion tokens
per second), the share of 200, 429, 503 and anything else, latency p50 and
p99 of the 200s and of the refusals, whether every refusal carried
Retry-After, whether the generator kept up, where the CPU went, and the
gateway's RSS (its process tree) before the load, sampled during it, and
after. Targets: refusals p99 under 50 ms; RSS after the loads within 10% of
before.

`python -m bench.overload_bench [--quick]`; `make bench-overload`; part of `make bench`
(quick) and `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil

from bench.gateway_bench import Target, log, wait_until_answering
from bench.harness import (
    cpu_use,
    percentile,
    running_stack,
    simulated_model,
    sites_stack,
    standalone_gateway,
)
from tests.support.processes import FirstProcess, start_standalone_gateway

MODEL = "sim-overload"
OUTPUT_TOKENS = 16
TTFT_MS, TPOT_MS, MAX_NUM_SEQS = 50.0, 10.0, 8
MAX_IN_FLIGHT = 2 * MAX_NUM_SEQS
# Every slot busy, each request holding one for its first token and the rest.
CAPACITY_RPS = MAX_NUM_SEQS / ((TTFT_MS + (OUTPUT_TOKENS - 1) * TPOT_MS) / 1000)
LOADS = (2.0, 5.0)
REFUSAL_P99_TARGET_MS = 50.0
RSS_GROWTH_TARGET = 0.10  # after the loads, at most this much above before
SAMPLE_EVERY_S = 0.5
SETTLE_S = 2.0  # after a load: its last answers in, the gateway idle again
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say something about overload and backpressure."}],
    "max_tokens": OUTPUT_TOKENS,
}
REFUSED = (429, 503)
MAX_LAG_MS = 10.0  # a generator sending later than this at p99 has fallen behind
CHAT = "/v1/chat/completions"
IN_FLIGHT_METRIC = "first_site_requests_in_flight"


def site() -> dict:
    return {
        "name": "sim",
        "models": [simulated_model(MODEL, TTFT_MS, TPOT_MS, MAX_NUM_SEQS)],
    }


@dataclasses.dataclass(frozen=True)
class Answer:
    sent_s: float  # when it went out, seconds from the run's start
    status: int | None  # None: no HTTP answer (the error's class is the message)
    latency_ms: float  # from the moment it was sent
    lag_ms: float  # how late it was sent against its arrival time
    tokens: int
    retry_after: str | None
    message: str


async def send(
    session: aiohttp.ClientSession, url: str, run_started: float, lag_ms: float = 0.0
) -> Answer:
    started = time.perf_counter()
    sent_s = round(started - run_started, 4)
    try:
        async with session.post(url, json=BODY) as response:
            body = await response.json(content_type=None)
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        latency = (time.perf_counter() - started) * 1000
        return Answer(sent_s, None, latency, lag_ms, 0, None, type(exc).__name__)
    latency = (time.perf_counter() - started) * 1000
    if status == 200:
        tokens = body["usage"]["completion_tokens"]
        return Answer(sent_s, status, latency, lag_ms, tokens, None, "")
    message = str((body.get("error") or {}).get("message", "")) if isinstance(body, dict) else ""
    return Answer(sent_s, status, latency, lag_ms, 0, retry_after, message)


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, duration_s: float, seed: int
) -> tuple[list[Answer], float, float]:
    """Poisson arrivals at `rate` for `duration_s`, each sent at its time however many are
    open: the answers, and the seconds from the start to the last send and to the last
    answer."""
    arrivals, clock, rng = [], 0.0, random.Random(seed)
    while (clock := clock + rng.expovariate(rate)) < duration_s:
        arrivals.append(clock)
    tasks, started = [], time.perf_counter()
    for arrival in arrivals:
        wait = started + arrival - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        lag_ms = max(-wait, 0.0) * 1000
        tasks.append(asyncio.create_task(send(session, url, started, lag_ms)))
    sending_s = time.perf_counter() - started
    answers = await asyncio.gather(*tasks)
    return answers, sending_s, time.perf_counter() - started


async def closed_loop(
    session: aiohttp.ClientSession, url: str, concurrency: int, duration_s: float
) -> tuple[list[Answer], float]:
    """`concurrency` clients, each sending its next request when the last is answered."""
    answers: list[Answer] = []
    started = time.perf_counter()

    async def client() -> None:
        while time.perf_counter() - started < duration_s:
            answers.append(await send(session, url, started))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers, time.perf_counter() - started


async def in_flight(session: aiohttp.ClientSession, base: str) -> float:
    """Requests the gateway counts open at its sites now (its /metrics)."""
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{IN_FLIGHT_METRIC}{{")
    )


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and every process under it, MiB."""
    root = psutil.Process(pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return round(total / 2**20, 1)


async def sample_rss(pid: int, peak: list[float]) -> None:
    """Keep the highest RSS seen in `peak[0]` until cancelled."""
    while True:
        peak[0] = max(peak[0], tree_rss_mib(pid))
        await asyncio.sleep(SAMPLE_EVERY_S)


@contextlib.contextmanager
def cpu_of_roles() -> Iterator[dict]:
    """`cpu_use`, with this process (the load generator) as a role of its own."""
    own = psutil.Process()
    before = sum(own.cpu_times()[:2])
    with cpu_use() as used:
        yield used
    spent = round(sum(own.cpu_times()[:2]) - before, 2)
    used["everything_else"] = round(used["everything_else"] - spent, 2)
    used["load_generator"] = spent


def latency(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
    }


def shares(answers: list[Answer]) -> dict:
    counts = Counter(a.status if a.status in (200, *REFUSED) else "other" for a in answers)
    return {
        str(key): round(counts[key] / max(len(answers), 1), 4) for key in (200, *REFUSED, "other")
    }


def summarise(answers: list[Answer], wall_s: float) -> dict:
    """Goodput, shares, latencies and Retry-After of one run's answers."""
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status in REFUSED]
    others = [a for a in answers if a.status not in (200, *REFUSED)]
    return {
        "answered": len(answers),
        "answered_per_s": round(len(answers) / wall_s, 2),
        "goodput_requests_per_s": round(len(ok) / wall_s, 2),
        "goodput_tokens_per_s": round(sum(a.tokens for a in ok) / wall_s, 1),
        "share": shares(answers),
        "latency_200": latency([a.latency_ms for a in ok]),
        "latency_refused": latency([a.latency_ms for a in refused]),
        "refused_without_retry_after": sum(a.retry_after is None for a in refused),
        "retry_after_s": sorted({a.retry_after for a in refused if a.retry_after}),
        "messages": Counter(a.message for a in refused + others).most_common(3),
    }


async def offered(session, url: str, gateway_pid: int, load: float, args) -> dict:
    """One open-loop run at `load` times the capacity, with the gateway's RSS around it;
    every answer is kept in the workdir (answers-LOADx.jsonl)."""
    rate, duration_s = load * CAPACITY_RPS, args.duration_s
    before = tree_rss_mib(gateway_pid)
    peak = [before]
    sampler = asyncio.create_task(sample_rss(gateway_pid, peak))
    try:
        with cpu_of_roles() as cpu:
            answers, sending_s, wall_s = await open_loop(session, url, rate, duration_s, seed=19)
    finally:
        sampler.cancel()
    await asyncio.sleep(SETTLE_S)
    after = tree_rss_mib(gateway_pid)
    lines = (json.dumps(dataclasses.asdict(answer)) + "\n" for answer in answers)
    (args.workdir / f"answers-{load:g}x.jsonl").write_text("".join(lines))
    lag = latency([a.lag_ms for a in answers])
    run = {
        "load": load,
        "offered_per_s": round(rate, 2),
        "sent": len(answers),
        "sent_per_s": round(len(answers) / max(sending_s, duration_s), 2),
        "send_lag": lag,
        "generator_kept_up": lag["p99_ms"] < MAX_LAG_MS,
        **summarise(answers, wall_s),
        "gateway_rss_mib": {"before": before, "peak": max(peak[0], after), "after": after},
        "cpu_s": cpu,
    }
    log(
        f"{load:g}x ({rate:.0f}/s offered, {run['sent_per_s']:.0f}/s sent): goodput "
        f"{run['goodput_requests_per_s']:.1f} req/s, share {run['share']}, refusals p99 "
        f"{run['latency_refused'].get('p99_ms', '-')} ms, RSS {run['gateway_rss_mib']} MiB"
    )
    return run


async def measure(url: str, gateway_pid: int, args) -> dict:
    """The yardstick, then every load, then a few requests one at a time (does it recover?)."""
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await closed_loop(session, url, MAX_NUM_SEQS, 2)  # warm connections and code paths
        at_start = tree_rss_mib(gateway_pid)
        # At the gateway's bound: the engine's slots and its queue stay full, so it never
        # waits for the next request (at MAX_NUM_SEQS it would, one round trip each).
        answers, wall_s = await closed_loop(session, url, MAX_IN_FLIGHT, args.yardstick_s)
        yardstick = {"concurrency": MAX_IN_FLIGHT, "seconds": round(wall_s, 1)}
        yardstick |= summarise(answers, wall_s)
        log(
            f"capacity {CAPACITY_RPS:.1f} req/s by the timing, "
            f"{yardstick['goodput_requests_per_s']:.1f} measured (closed loop)"
        )
        before = tree_rss_mib(gateway_pid)
        runs = [await offered(session, url, gateway_pid, load, args) for load in args.loads]
        after, _ = await closed_loop(session, url, MAX_NUM_SEQS, 2)
        left_open = await in_flight(session, url.removesuffix(CHAT))
    return {
        "yardstick": yardstick,
        "runs": runs,
        "recovery": {
            "closed_loop_concurrency": MAX_NUM_SEQS,
            "share": shares(after),
            "gateway_in_flight_after": left_open,
        },
        "gateway_rss_mib": {
            "after_warm_up": at_start,
            "before": before,
            "peak": max(run["gateway_rss_mib"]["peak"] for run in runs),
            "after": tree_rss_mib(gateway_pid),
        },
    }


def verdict(measured: dict) -> dict:
    rss = measured["gateway_rss_mib"]
    p99s = [run["latency_refused"].get("p99_ms", 0.0) for run in measured["runs"]]
    return {
        "refusal_p99_ms_worst": max(p99s),
        "rss_growth": round(rss["after"] / rss["before"] - 1, 3),
        "every_refusal_had_retry_after": all(
            run["refused_without_retry_after"] == 0 for run in measured["runs"]
        ),
    }


def start_gateway(stack: Path, workdir: Path) -> tuple[FirstProcess, str]:
    """The standalone gateway under test: open, no limits, the site bounded in flight."""
    config = standalone_gateway(stack, workdir, auth={"required": False})
    for entry in config["sites"]:
        entry["max_in_flight"] = MAX_IN_FLIGHT
    return start_standalone_gateway(
        config, workdir / "federation-overload.yaml", "overload", timeout_s=120
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/overload.json")
    parser.add_argument("--quick", action="store_true", help="10 s per load instead of 60 s.")
    parser.add_argument("--duration-s", type=float, default=None, help="Seconds per load.")
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS))
    args = parser.parse_args()
    args.duration_s = args.duration_s or (10 if args.quick else 60)
    args.yardstick_s = 5 if args.quick else 15
    workdir = args.workdir = Path(tempfile.mkdtemp(prefix="first-bench-overload-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    stack = sites_stack(workdir, ray_temp, [site()])
    log(f"starting one simulated site ({CAPACITY_RPS:.1f} req/s), workdir {workdir}")
    with running_stack(stack, workdir, ray_temp, 600):
        gateway, url = start_gateway(stack, workdir)
        try:
            chat = f"{url}{CHAT}"
            wait_until_answering(Target(chat, BODY), 120, "the gateway")
            measured = asyncio.run(measure(chat, gateway.process.pid, args))
        finally:
            gateway.stop()
    result = {
        "what": "open-loop overload of one simulated site through a standalone gateway",
        "quick": args.quick,
        "site": {
            "ttft_ms": TTFT_MS,
            "tpot_ms": TPOT_MS,
            "max_num_seqs": MAX_NUM_SEQS,
            "capacity_rps": round(CAPACITY_RPS, 2),
        },
        "gateway": {"max_in_flight": MAX_IN_FLIGHT, "limits": None},
        "request": {"stream": False, "max_tokens": OUTPUT_TOKENS},
        "load": {"tool": "aiohttp, Poisson arrivals, open loop", "duration_s": args.duration_s},
        "target": {"refusal_p99_ms": REFUSAL_P99_TARGET_MS, "rss_growth_max": RSS_GROWTH_TARGET},
        **measured,
        **verdict(measured),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
