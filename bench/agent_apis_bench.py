"""Agent APIs benchmark: what the Responses and Messages translation adds to a request.

The gateway serves OpenAI's Responses API (`POST /v1/responses`) and
Anthropic's Messages API (`POST /v1/messages`) by translating each request
onto the site's chat completions (serve_app/translation/). This measures
what that costs against the same request sent as a chat completion, in the
same run, through one standalone gateway (`first gateway up --standalone`,
open, no rate limits) in front of one simulated site on a Serve-hosted
stack whose engine takes no time per token (`ttft_ms` and `tpot_ms` 0), so
the hops, not a model, are what the latency is made of.

Four ways of asking for the same answer (same prompt, `OUTPUT_TOKENS`
output tokens): `chat` (`/v1/chat/completions`), `responses` (`store:
false`), `responses-stored` (`store` left at its default, true: one SQLite
row a response) and `messages` (`/v1/messages`), each non-streamed and
streamed (`stream: true`; the chat stream asks for usage, as the
translation asks the site for it), at concurrency 1 and 32. An aiohttp
closed loop in this process times every request to its last byte (and, for
streams, to the first byte of the body). The four take turns in
`--rounds` rounds of `--requests` requests per cell (at least `PER_CLIENT`
per client), their order rotated each round, so the machine's drift hits
all alike. Reported per cell: p50
and p99 over every round, the p50 of each round, the gateway's CPU time
per request; the added latency of an API is its p50 minus chat's p50 at
the same concurrency and stream mode (and, as a check, the median over
rounds of the same difference taken within each round). Target: under
`TARGET_MS` p50 added at concurrency 1, streamed and not.

`python -m bench.agent_apis_bench`; `make bench-agent-apis`; part of `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from bench.gateway_bench import Target, log, wait_until_answering
from bench.harness import (
    percentile,
    running_stack,
    simulated_model,
    sites_stack,
    standalone_gateway,
)
from tests.support.processes import FirstProcess, start_standalone_gateway

MODEL = "sim-agent"
PROMPT = "Name three things an agent does with a tool call, in one short line."
OUTPUT_TOKENS = 16
MAX_NUM_SEQS = 256  # more slots than requests in flight: nobody waits for one
TARGET_MS = 1.0  # p50 added over chat at concurrency 1, streamed and not
CONCURRENCY = (1, 32)
ROUNDS, REQUESTS = 10, 320
PER_CLIENT = 20  # at least this many requests per client in a cell (640 at 32 concurrent)
MODES = {"non_streamed": False, "streamed": True}
CHAT = "/v1/chat/completions"
# Each API's route and body; `stream` is added per mode.
APIS: dict[str, tuple[str, dict]] = {
    "chat": (
        CHAT,
        {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": OUTPUT_TOKENS},
    ),
    "responses": (
        "/v1/responses",
        {"input": PROMPT, "max_output_tokens": OUTPUT_TOKENS, "store": False},
    ),
    "responses-stored": ("/v1/responses", {"input": PROMPT, "max_output_tokens": OUTPUT_TOKENS}),
    "messages": (
        "/v1/messages",
        {"max_tokens": OUTPUT_TOKENS, "messages": [{"role": "user", "content": PROMPT}]},
    ),
}
# The last event of a complete stream, per route (a Responses stream that ran out of
# tokens ends in response.incomplete).
STREAM_ENDS = {
    CHAT: (b"data: [DONE]",),
    "/v1/responses": (b"event: response.completed", b"event: response.incomplete"),
    "/v1/messages": (b"event: message_stop",),
}
TIMEOUT_S = 60
TAIL_BYTES = 8192  # enough to hold a stream's last event (a Responses one holds the response)


def body(api: str, stream: bool) -> dict:
    route, fields = APIS[api]
    extra: dict = {"stream": True} if stream else {}
    if stream and route == CHAT:  # what the translation asks the site for, too
        extra["stream_options"] = {"include_usage": True}
    return {"model": MODEL, **fields, **extra}


@dataclass(frozen=True)
class Request:
    """One API in one mode, ready to send: its URL, its encoded body, how its stream ends."""

    api: str
    stream: bool
    url: str
    payload: bytes
    ends: tuple[bytes, ...]

    @classmethod
    def of(cls, base: str, api: str, stream: bool) -> Request:
        route = APIS[api][0]
        payload = json.dumps(body(api, stream)).encode()
        return cls(api, stream, f"{base}{route}", payload, STREAM_ENDS[route] if stream else ())


HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Timing:
    ok: bool  # answered 200, and a stream to its last event
    first_byte_ms: float  # to the body's first byte
    last_byte_ms: float
    failure: str = ""  # what came instead, when not ok


async def timed(session: aiohttp.ClientSession, request: Request) -> Timing:
    """One request, timed to the first and the last byte of its answer's body."""
    started = time.perf_counter()
    first, tail, status = None, b"", 0
    try:
        async with session.post(request.url, data=request.payload, headers=HEADERS) as response:
            while chunk := await response.content.readany():
                first = first or time.perf_counter()
                tail = (tail + chunk)[-TAIL_BYTES:]
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        tail = type(exc).__name__.encode()
    ended = time.perf_counter()
    ok = status == 200 and (not request.ends or any(end in tail for end in request.ends))
    failure = "" if ok else f"HTTP {status}: {tail[-300:].decode(errors='replace')}"
    return Timing(ok, ((first or ended) - started) * 1000, (ended - started) * 1000, failure)


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def cell(session, request: Request, concurrency: int, count: int, gateway_pid: int) -> dict:
    """`count` requests from `concurrency` clients in a closed loop: every timing, the wall
    time and the gateway's CPU seconds."""
    timings: list[Timing] = []
    left = iter(range(count))

    async def client() -> None:
        for _ in left:  # shared: each client takes the next request
            timings.append(await timed(session, request))

    cpu_before, started = cpu_s(gateway_pid), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "timings": timings,
        "wall_s": time.perf_counter() - started,
        "gateway_cpu_s": cpu_s(gateway_pid) - cpu_before,
    }


def output_tokens(answer: bytes, stream: bool) -> int | None:
    """The output tokens an answer reports (a stream's last usage), whatever the API."""
    found = None
    objects = [answer] if not stream else [
        line.removeprefix(b"data:").strip()
        for line in answer.splitlines()
        if line.startswith(b"data:") and line.strip() != b"data: [DONE]"
    ]  # fmt: skip
    for text in objects:
        value = json.loads(text)
        usage = value.get("usage") or (value.get("response") or {}).get("usage") or {}
        tokens = usage.get("completion_tokens", usage.get("output_tokens"))
        found = tokens if tokens is not None else found
    return found


async def check(session, request: Request) -> dict:
    """One answer read whole: its status, size and output tokens (the same for every API)."""
    async with session.post(request.url, data=request.payload, headers=HEADERS) as response:
        answer, status = await response.read(), response.status
    if status != 200:
        raise SystemExit(f"{request.api} ({request.stream=}) got HTTP {status}: {answer[:300]!r}")
    tokens = output_tokens(answer, request.stream)
    if tokens != OUTPUT_TOKENS:
        raise SystemExit(f"{request.api} ({request.stream=}) answered {tokens} output tokens")
    return {"output_tokens": tokens, "answer_bytes": len(answer)}


def summarise(runs: list[dict]) -> dict:
    """A cell's rounds: p50 and p99 over all of them, each round's p50, CPU per request."""
    ok = [t for run in runs for t in run["timings"] if t.ok]
    last, first = [t.last_byte_ms for t in ok], [t.first_byte_ms for t in ok]
    requests = sum(len(run["timings"]) for run in runs)
    failures = [t.failure for run in runs for t in run["timings"] if not t.ok]
    if len(ok) < 2:
        raise SystemExit(f"{requests - len(ok)} of {requests} requests failed: {failures[:1]}")
    return {
        "requests": requests,
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "p50_ms": round(percentile(last, 50), 3),
        "p99_ms": round(percentile(last, 99), 3),
        "first_byte_p50_ms": round(percentile(first, 50), 3),
        "first_byte_p99_ms": round(percentile(first, 99), 3),
        "round_p50_ms": [
            round(percentile([t.last_byte_ms for t in run["timings"] if t.ok], 50), 3)
            for run in runs
        ],
        "requests_per_s": round(
            statistics.median(len(run["timings"]) / run["wall_s"] for run in runs), 1
        ),
        "gateway_cpu_ms_per_request": round(
            1000 * sum(run["gateway_cpu_s"] for run in runs) / requests, 3
        ),
    }


async def one_round(session, requests: dict, order: list[str], args, pid: int) -> dict:
    """Every level and mode, the APIs in `order` each time: the runs, by API, mode, level."""
    runs = {}
    for concurrency in args.concurrency:
        for mode in MODES:
            p50s = []
            for api in order:
                count = max(args.requests, PER_CLIENT * concurrency)
                run = await cell(session, requests[(api, mode)], concurrency, count, pid)
                runs[(api, mode, concurrency)] = run
                p50s.append(f"{api} {percentile([t.last_byte_ms for t in run['timings']], 50):.2f}")
            log(f"c={concurrency:<3} {mode:<12} p50 {', '.join(p50s)} ms")
    return runs


async def measure(base: str, gateway_pid: int, args) -> tuple[dict, dict]:
    """Every API's answer checked, a warm-up, then the rounds: the checks and the cells."""
    requests = {
        (api, mode): Request.of(base, api, stream) for mode, stream in MODES.items() for api in APIS
    }
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        checked = {f"{api} {mode}": await check(session, r) for (api, mode), r in requests.items()}
        for request in requests.values():  # connections and code paths
            for concurrency in args.concurrency:
                await cell(session, request, concurrency, 4 * concurrency, gateway_pid)
        runs: dict[tuple[str, str, int], list[dict]] = {}
        apis = list(APIS)
        for repeat in range(args.rounds):
            log(f"round {repeat + 1}/{args.rounds}")
            # Rotated, so that no API always runs first, or after the same one.
            order = apis[repeat % len(apis) :] + apis[: repeat % len(apis)]
            done = await one_round(session, requests, order, args, gateway_pid)
            for key, run in done.items():
                runs.setdefault(key, []).append(run)
    return checked, {key: summarise(value) for key, value in runs.items()}


def added(cells: dict, concurrency: int, mode: str) -> dict:
    """Each translated API against chat at `concurrency` in `mode`: p50 (and p99, first
    byte) differences, and the median of the rounds' own p50 differences."""
    chat = cells[("chat", mode, concurrency)]
    result = {}
    for api in list(APIS)[1:]:
        measured = cells[(api, mode, concurrency)]
        per_round = [
            a - c for a, c in zip(measured["round_p50_ms"], chat["round_p50_ms"], strict=True)
        ]
        result[api] = {
            "p50_ms": round(measured["p50_ms"] - chat["p50_ms"], 3),
            "p99_ms": round(measured["p99_ms"] - chat["p99_ms"], 3),
            "first_byte_p50_ms": round(
                measured["first_byte_p50_ms"] - chat["first_byte_p50_ms"], 3
            ),
            "median_of_rounds_ms": round(statistics.median(per_round), 3),
            "gateway_cpu_ms_per_request": round(
                measured["gateway_cpu_ms_per_request"] - chat["gateway_cpu_ms_per_request"], 3
            ),
        }
    return result


def start_gateway(stack: Path, workdir: Path) -> tuple[FirstProcess, str]:
    """The standalone gateway under test: open (auth off), no limits, the ledger on."""
    config = standalone_gateway(stack, workdir, auth={"required": False})
    return start_standalone_gateway(
        config, workdir / "federation-agent-apis.yaml", "agent-apis", timeout_s=120
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/agent_apis.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--requests", type=int, default=REQUESTS, help="Requests per API, mode and level a round."
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-agent-apis-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    site = {"name": "sim", "models": [simulated_model(MODEL, 0, 0, MAX_NUM_SEQS)]}
    stack = sites_stack(workdir, ray_temp, [site])
    log(f"starting one zero-delay simulated site, workdir {workdir}")
    with running_stack(stack, workdir, ray_temp, 600):
        gateway, url = start_gateway(stack, workdir)
        try:
            wait_until_answering(Target(f"{url}{CHAT}", body("chat", False)), 120, "the gateway")
            checked, cells = asyncio.run(measure(url, gateway.process.pid, args))
        finally:
            gateway.stop()
    added_p50 = {
        f"c{concurrency}": {mode: added(cells, concurrency, mode) for mode in MODES}
        for concurrency in args.concurrency
    }
    at_1 = [v["p50_ms"] for by_mode in added_p50.get("c1", {}).values() for v in by_mode.values()]
    result = {
        "what": "p50 the Responses and Messages translation adds over the same chat completion, "
        "standalone gateway, zero-delay simulated site",
        "target_ms": TARGET_MS,
        "site": {"engine": "simulated", "ttft_ms": 0, "tpot_ms": 0, "max_num_seqs": MAX_NUM_SEQS},
        "gateway": {"standalone": True, "auth": None, "limits": None, "ledger": True},
        "request": {
            "prompt": PROMPT,
            "output_tokens": OUTPUT_TOKENS,
            "bodies": {api: body(api, False) for api in APIS},
        },
        "load": {
            "tool": "aiohttp, closed loop, in the benchmark's process",
            "rounds": args.rounds,
            "requests_per_measuredand_round": args.requests,
            "concurrency": args.concurrency,
        },
        "checked": checked,
        "cells": [
            {"api": api, "mode": mode, "concurrency": concurrency, **measured}
            for (api, mode, concurrency), measured in cells.items()
        ],
        "added_p50_ms": added_p50,
        "added_p50_ms_worst_at_1": max(at_1) if at_1 else None,
        "met": bool(at_1) and max(at_1) < TARGET_MS,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    for level, by_mode in added_p50.items():
        for mode, by_api in by_mode.items():
            log(
                f"{level} {mode}: "
                + ", ".join(f"{a} {v['p50_ms']:+.3f} ms" for a, v in by_api.items())
            )


if __name__ == "__main__":
    main()
