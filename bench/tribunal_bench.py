"""Tribunals: what the generate -> critique -> revise workflow adds to its own model calls.

Two simulated sites (bench/README.md) on one Serve-hosted stack serve the
tribunal's members, each model on one site with its own timing so the
steps differ: east the generator and a fast critic, west a slow critic and
the reviser, so every round crosses both sites. One standalone gateway
(open, no rate limits) declares two tribunals of the same members, one
round and two. `--requests` chat completions (20; 5 with `--quick`) go to
each tribunal one after another from an aiohttp client in this process,
non-streaming, `max_tokens` fixed (the critics' length is the tribunal's
`critic_max_tokens`), with `first_trace: true`, so every answer says when
each step was sent and how long it took at the gateway.

Reported per tribunal: the p50 of each step's duration by step, round and
model; the client's wall time p50/p99; the critical path of the model calls
(generate, then per round the slowest critic and the revise, from the
trace) and the workflow's overhead, wall time minus that path, in ms and as
a fraction of it, split into the client-to-first-step and last-step-to-
client time, the gaps between steps, and the critics' staggered starts.
The yardstick: after each tribunal request, the client makes the same calls
itself through the gateway's own `/v1/chat/completions` (same prompts from
the same templates, same lengths, the critics at once), and its critical
path, timed by the client, gateway hop included, is compared too. Target:
the overhead's p50 under 5% of the critical path, for both tribunals.

`python -m bench.tribunal_bench [--quick]`; `make bench-tribunal`; part of
`make bench` (quick) and `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

from bench.gateway_bench import Target, log, wait_until_answering
from bench.harness import (
    percentile,
    running_stack,
    simulated_model,
    sites_stack,
    standalone_gateway,
)
from bench.overload_bench import latency
from serve_app.config.workflows import DEFAULT_CRITIC_PROMPT, DEFAULT_REVISE_PROMPT
from tests.support.processes import FirstProcess, start_standalone_gateway

GENERATOR, CRITICS, REVISER = "sim-generator", ("sim-critic-fast", "sim-critic-slow"), "sim-reviser"
# Each model's ttft_ms and tpot_ms; max_num_seqs is ample (requests go one at a time).
TIMING = {
    GENERATOR: (40.0, 10.0),
    CRITICS[0]: (30.0, 6.0),
    CRITICS[1]: (60.0, 12.0),
    REVISER: (50.0, 12.0),
}
SITES = {"east": (GENERATOR, CRITICS[0]), "west": (CRITICS[1], REVISER)}
MAX_NUM_SEQS = 4
MAX_TOKENS, CRITIC_MAX_TOKENS = 32, 16
ROUNDS = (1, 2)
REQUESTS, QUICK_REQUESTS = 20, 5
WARM_UP = 2
OVERHEAD_TARGET = 0.05  # the overhead's p50, as a fraction of the critical path, below this
CHAT = "/v1/chat/completions"
TIMEOUT_S = 120


def site(name: str) -> dict:
    return {
        "name": name,
        "models": [simulated_model(m, *TIMING[m], MAX_NUM_SEQS) for m in SITES[name]],
    }


def tribunal_name(rounds: int) -> str:
    return f"bench-tribunal-{rounds}"


def tribunal(rounds: int) -> dict:
    return {
        "name": tribunal_name(rounds),
        "generator": GENERATOR,
        "critics": list(CRITICS),
        "reviser": REVISER,
        "rounds": rounds,
        "critic_max_tokens": CRITIC_MAX_TOKENS,
    }


def question(index: int) -> list[dict]:
    text = f"Question {index}: why would research centres federate their GPUs?"
    return [{"role": "user", "content": text}]


async def post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, float]:
    """One request: its status (0: no HTTP answer), JSON answer and wall time in seconds."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            answer = await response.json(content_type=None)
            status = response.status
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return 0, {"error": {"message": type(exc).__name__}}, time.perf_counter() - started
    return status, answer, time.perf_counter() - started


# -- the tribunal, as the gateway runs it ---------------------------------------


def phases(trace: list[dict]) -> list[tuple[float, float, float]]:
    """The critical path as (start, end, duration) per phase: generate, then per round
    the panel (first start, last end, its slowest critic's duration) and the revise."""

    def span(steps: list[dict]) -> tuple[float, float, float]:
        return (
            min(s["started_at"] for s in steps),
            max(s["started_at"] + s["duration_s"] for s in steps),
            max(s["duration_s"] for s in steps),
        )

    by_phase: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for step in trace:
        by_phase[step["round"], step["step"]].append(step)
    order = sorted(by_phase, key=lambda key: (key[0], key[1] == "revise"))
    return [span(by_phase[key]) for key in order]


def timeline(trace: list[dict], sent_at: float, wall_s: float) -> dict:
    """A tribunal answer's wall time against its critical path, the difference split
    into where it went (ms): overhead = before + between + after + panel_stagger."""
    path = phases(trace)
    critical_s = sum(duration for _, _, duration in path)
    return {
        "wall_ms": wall_s * 1000,
        "critical_path_ms": critical_s * 1000,
        "overhead_ms": (wall_s - critical_s) * 1000,
        "overhead_fraction": (wall_s - critical_s) / critical_s,
        "before_first_step_ms": (path[0][0] - sent_at) * 1000,
        "between_steps_ms": sum(b[0] - a[1] for a, b in itertools.pairwise(path)) * 1000,
        "after_last_step_ms": (sent_at + wall_s - path[-1][1]) * 1000,
        "panel_stagger_ms": sum(end - start - d for start, end, d in path[1::2]) * 1000,
    }


async def tribunal_request(session, base: str, rounds: int, index: int) -> dict:
    """One chat completion on the tribunal of `rounds` rounds, with its trace."""
    body = {
        "model": tribunal_name(rounds),
        "messages": question(index),
        "max_tokens": MAX_TOKENS,
        "first_trace": True,
    }
    sent_at = time.time()
    status, answer, wall_s = await post(session, f"{base}{CHAT}", body)
    if status != 200:
        return {"status": status, "error": str(answer)[:300]}
    trace = answer["first_trace"]
    steps = [
        {key: step[key] for key in ("step", "round", "model", "site", "duration_s")}
        for step in trace
    ]
    return {"status": status, "steps": steps, **timeline(trace, sent_at, wall_s)}


# -- the yardstick: the same calls, made by the client ----------------------------


class CallError(Exception):
    """A call of the client-made chain failed."""


def as_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


async def direct_call(session, base: str, model: str, messages: list, max_tokens: int):
    """One chat completion through the gateway's own route: its text and seconds."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens}
    status, answer, wall_s = await post(session, f"{base}{CHAT}", body)
    if status != 200:
        raise CallError(f"{model}: HTTP {status}: {str(answer)[:300]}")
    return answer["choices"][0]["message"]["content"], wall_s


async def direct_round(session, base: str, messages: list, text: str) -> tuple[str, list, float]:
    """One round made by the client: the critics at once, then the revise. The revised
    text, the steps, and the round's critical path in seconds."""
    prompt = DEFAULT_CRITIC_PROMPT.format(conversation=as_text(messages), answer=text)
    panel = [{"role": "user", "content": prompt}]
    critiques = await asyncio.gather(
        *(direct_call(session, base, critic, panel, CRITIC_MAX_TOKENS) for critic in CRITICS)
    )
    numbered = "\n\n".join(f"{i}. {critique}" for i, (critique, _) in enumerate(critiques, 1))
    revise = DEFAULT_REVISE_PROMPT.format(
        critiques=numbered, answer=text, conversation=as_text(messages)
    )
    reviser_messages = [
        *messages,
        {"role": "assistant", "content": text},
        {"role": "user", "content": revise},
    ]
    revised, seconds = await direct_call(session, base, REVISER, reviser_messages, MAX_TOKENS)
    steps = [("critique", critic, s) for critic, (_, s) in zip(CRITICS, critiques, strict=True)]
    steps.append(("revise", REVISER, seconds))
    return revised, steps, max(s for _, s in critiques) + seconds


async def direct_chain(session, base: str, rounds: int, index: int) -> dict:
    """The tribunal's calls made by the client: generate, then each round; each call
    timed here."""
    messages = question(index)
    started = time.perf_counter()
    try:
        text, critical_s = await direct_call(session, base, GENERATOR, messages, MAX_TOKENS)
        steps = [{"step": "generate", "round": 0, "model": GENERATOR, "duration_s": critical_s}]
        for round_ in range(1, rounds + 1):
            text, made, seconds = await direct_round(session, base, messages, text)
            critical_s += seconds
            steps += [
                {"step": step, "round": round_, "model": model, "duration_s": s}
                for step, model, s in made
            ]
    except CallError as exc:
        return {"status": 0, "error": str(exc)}
    return {
        "status": 200,
        "steps": steps,
        "wall_ms": (time.perf_counter() - started) * 1000,
        "critical_path_ms": critical_s * 1000,
    }


# -- the measurement -------------------------------------------------------------


def step_p50_ms(runs: list[dict]) -> dict:
    """Each step's duration p50 in ms, by `step round model`."""
    durations: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for step in run["steps"]:
            durations[f"{step['step']} {step['round']} {step['model']}"].append(step["duration_s"])
    return {key: round(statistics.median(values) * 1000, 1) for key, values in durations.items()}


def fractions(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 4),
        "p99": round(percentile(values, 99), 4),
    }


def overhead_parts(runs: list[dict]) -> dict:
    """Where the overhead went, p50 of each part in ms."""
    parts = ("before_first_step_ms", "between_steps_ms", "after_last_step_ms", "panel_stagger_ms")
    if not runs:
        return {}
    return {part: round(statistics.median(run[part] for run in runs), 2) for part in parts}


def summarise(rounds: int, runs: list[dict], chains: list[dict]) -> dict:
    """One tribunal's runs and the client-made chains beside them."""
    ok = [run for run in runs if run["status"] == 200]
    chained = [chain for chain in chains if chain["status"] == 200]
    pairs = [
        (run["wall_ms"], chain["critical_path_ms"])
        for run, chain in zip(runs, chains, strict=True)
        if run["status"] == chain["status"] == 200
    ]
    return {
        "tribunal": tribunal_name(rounds),
        "rounds": rounds,
        "requests": len(runs),
        "failed": len(runs) - len(ok),
        "errors": [run["error"] for run in runs if run["status"] != 200][:3],
        "sites": sorted({f"{s['model']}@{s['site']}" for run in ok for s in run["steps"]}),
        "steps_p50_ms": step_p50_ms(ok),
        "wall": latency([run["wall_ms"] for run in ok]),
        "critical_path": latency([run["critical_path_ms"] for run in ok]),
        "overhead": latency([run["overhead_ms"] for run in ok]),
        "overhead_fraction": fractions([run["overhead_fraction"] for run in ok]),
        "overhead_parts_p50_ms": overhead_parts(ok),
        "direct": {
            "failed": len(chains) - len(chained),
            "errors": [chain["error"] for chain in chains if chain["status"] != 200][:3],
            "steps_p50_ms": step_p50_ms(chained),
            "wall": latency([chain["wall_ms"] for chain in chained]),
            "critical_path": latency([chain["critical_path_ms"] for chain in chained]),
        },
        # The tribunal's wall time against the client's own calls' critical path.
        "overhead_over_direct": latency([wall - path for wall, path in pairs]),
        "overhead_over_direct_fraction": fractions([(w - p) / p for w, p in pairs]),
    }


async def measure(base: str, requests: int) -> list[dict]:
    """Per tribunal: warm up, then `requests` times the tribunal request and the same
    calls made by the client, one after the other."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    results = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for rounds in ROUNDS:
            for index in range(WARM_UP):
                await tribunal_request(session, base, rounds, index)
                await direct_chain(session, base, rounds, index)
            runs, chains = [], []
            for index in range(requests):
                runs.append(await tribunal_request(session, base, rounds, index))
                chains.append(await direct_chain(session, base, rounds, index))
            result = summarise(rounds, runs, chains)
            log(
                f"{result['tribunal']}: wall p50 {result['wall'].get('p50_ms')} ms, critical "
                f"path p50 {result['critical_path'].get('p50_ms')} ms, overhead p50 "
                f"{result['overhead'].get('p50_ms')} ms ({result['overhead_fraction'].get('p50')}"
                f"), the client's own calls' critical path p50 "
                f"{result['direct']['critical_path'].get('p50_ms')} ms, {result['failed']} failed"
            )
            results.append(result)
    return results


def verdict(tribunals: list[dict]) -> dict:
    worst = max(t["overhead_fraction"].get("p50", float("inf")) for t in tribunals)
    clean = all(t["failed"] == 0 and t["direct"]["failed"] == 0 for t in tribunals)
    return {
        "overhead_fraction_p50_worst": worst,
        "met": {"overhead_under_target": worst < OVERHEAD_TARGET, "no_failures": clean},
    }


def start_gateway(stack: Path, workdir: Path) -> tuple[FirstProcess, str]:
    """The standalone gateway under test: open, no limits, both tribunals."""
    config = standalone_gateway(
        stack, workdir, auth={"required": False}, tribunals=[tribunal(r) for r in ROUNDS]
    )
    return start_standalone_gateway(
        config, workdir / "federation-tribunal.yaml", "tribunal", timeout_s=120
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/tribunal.json")
    parser.add_argument("--quick", action="store_true", help="5 requests per tribunal, not 20.")
    parser.add_argument("--requests", type=int, default=None)
    args = parser.parse_args()
    requests = args.requests or (QUICK_REQUESTS if args.quick else REQUESTS)
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-tribunal-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    stack = sites_stack(workdir, ray_temp, [site(name) for name in SITES])
    log(f"starting two simulated sites, workdir {workdir}")
    with running_stack(stack, workdir, ray_temp, 600):
        gateway, url = start_gateway(stack, workdir)
        try:
            first = {"model": tribunal_name(1), "messages": question(0), "max_tokens": 4}
            wait_until_answering(Target(f"{url}{CHAT}", first), 120, "the gateway")
            tribunals = asyncio.run(measure(url, requests))
        finally:
            gateway.stop()
    result = {
        "what": "a tribunal's wall time against the critical path of its model calls",
        "quick": args.quick,
        "requests_per_tribunal": requests,
        "sites": {name: list(models) for name, models in SITES.items()},
        "models": {
            model: {"ttft_ms": ttft, "tpot_ms": tpot, "max_num_seqs": MAX_NUM_SEQS}
            for model, (ttft, tpot) in TIMING.items()
        },
        "gateway": {"standalone": True, "limits": None},
        "request": {
            "stream": False,
            "max_tokens": MAX_TOKENS,
            "critic_max_tokens": CRITIC_MAX_TOKENS,
            "sequential": True,
        },
        "target": {"overhead_fraction_p50_max": OVERHEAD_TARGET},
        "tribunals": tribunals,
        **verdict(tribunals),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
