"""Transports benchmark: what reaching a site through an SSH tunnel or Globus Compute adds.

A site behind a firewall is reached by one of three transports
(serve_app/routing/transports.py): `direct` HTTP, an `ssh-tunnel` that the
site's connector opens (the gateway's requests go through the SOCKS proxy of
a reverse-forwarding OpenSSH connection), or `globus-compute` (each request is
one task on the site's control channel, sent on from the site and answered
whole). This measures what each costs, in one run, against one site, so the
differences are the transports' and nothing else's:

- one simulated site (`first site up`, its engine taking no time: `ttft_ms`
  and `tpot_ms` 0, `MAX_NUM_SEQS` slots), so the hops are what the latency
  is made of;
- one standalone gateway (`first gateway up --standalone`: auth off, no
  limits, no ledger) whose federation lists that site three times:
  `bench-direct` (direct), `bench-tunnel` (ssh-tunnel through a real OpenSSH
  sshd on loopback, confined as `first gateway tunnel-config` confines it,
  kept open by `first site connect`) and `bench-compute` (globus-compute, its
  endpoint-engine channel running globus-compute-endpoint's own engine in
  the endpoint's environment, started by the gateway);
- paths: `site` (the site's own endpoint, no gateway: the physical
  yardstick), `direct`, `tunnel` and `compute`, the last three through the
  pinned route `/sites/{name}/v1/chat/completions`.

Measured per path, from an aiohttp closed loop in this process (the agent
APIs benchmark's, every request timed to its last byte and, streamed, to the
first byte of its body): non-streaming chat p50/p99 at concurrency 1 and
32, requests per second at 32, and a stream's first byte (its time to first
token) at 1 (not for `compute`: a task cannot stream). The paths take turns
in `--rounds` rounds, their order rotated each round, so the machine's
drift hits all alike; a path's added latency is its p50 minus `direct`'s at
the same level (and, as a check, the median over rounds of the same
difference taken within each round). The gateway's CPU time per request and
that of each transport's carrier (sshd and the connector's ssh; the
endpoints the gateway started and their engine workers) say where a
transport's cost goes on these two shared cores. For `compute`, the
gateway's `Server-Timing` header (submit, queue, run) of a sample splits
its time.

Targets (the issue): ssh-tunnel under `TUNNEL_ADDED_MS` p50 added over
direct at concurrency 1, and at least `TUNNEL_RATE_RATIO` of direct's
requests per second at 32. globus-compute is recorded beside FIRST's
published +6-7 s a request through the Globus cloud: here the endpoint's
engine, the SDK's serialization and the endpoint's own environment are
real, the cloud between gateway and endpoint is not, so the cloud's share
of those seconds cannot be measured here.

`python -m bench.transports_bench`; `make bench-transports`; part of `make bench-full`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil
import yaml

from bench.agent_apis_bench import (
    CHAT,
    HEADERS,
    OUTPUT_TOKENS,
    STREAM_ENDS,
    TIMEOUT_S,
    Request,
    cell,
    output_tokens,
    summarise,
)
from bench.gateway_bench import Target, log, wait_until_answering
from bench.harness import REPO, percentile, simulated_model
from deployments.site_functions import site_status
from serve_app.config import load_federation
from serve_app.routing.forwarding import SITE_HEADER
from serve_app.routing.tunnels import authorized_keys
from tests.support.firewall import Sshd, site_key
from tests.support.processes import FirstProcess, free_port, start_standalone_gateway
from tests.support.waiting import eventually

MODEL = "sim-transports"
PROMPT = "Say hello from behind the firewall, in one short line."
MAX_NUM_SEQS = 256  # more slots than requests in flight: nobody waits for one
SITE = "bench"
# The gateway's name of the one site, per transport.
GATEWAY_SITES = {"direct": "bench-direct", "tunnel": "bench-tunnel", "compute": "bench-compute"}
PATHS = ("site", *GATEWAY_SITES)
# (concurrency, mode) of every cell; streams only at 1, and never through compute.
CELLS = ((1, "non_streamed"), (1, "streamed"), (32, "non_streamed"))
ROUNDS = 4
REQUESTS = {1: 150, 32: 640}  # per path and cell, each round
COMPUTE_WORKERS = 4  # the compute endpoint engine's worker processes
POLL_INTERVAL_S = 5.0  # status polls: few, so they stay out of the way
TUNNEL_ADDED_MS = 2.0
TUNNEL_RATE_RATIO = 0.9
FIRST_CLOUD_ADDED_S = (6, 7)  # FIRST's published cost of a request through the Globus cloud
SITE_START_TIMEOUT_S = 300
ENDPOINT_PYTHON = REPO / ".first" / "endpoint-venv" / "bin" / "python"


def body(stream: bool) -> dict:
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": MODEL, "messages": messages, "max_tokens": OUTPUT_TOKENS, **extra}


def request(path: str, base: str, stream: bool) -> Request:
    payload = json.dumps(body(stream)).encode()
    return Request(path, stream, f"{base}{CHAT}", payload, STREAM_ENDS[CHAT] if stream else ())


@dataclass
class Running:
    """What the benchmark talks to, and the processes whose CPU it counts."""

    gateway_url: str
    site_url: str  # the model's own endpoint at the site
    gateway: FirstProcess
    sshd: Sshd
    connector: FirstProcess

    def bases(self) -> dict[str, str]:
        pinned = {path: f"{self.gateway_url}/sites/{name}" for path, name in GATEWAY_SITES.items()}
        return {"site": self.site_url, **pinned}

    def carriers(self, path: str) -> list[psutil.Process]:
        """The processes that carry `path`'s requests besides the gateway, children too."""
        roots = {
            "tunnel": [self.sshd.process.pid, self.connector.process.pid],
            # The endpoints the gateway started (both sites'; the tunnel's only polls).
            "compute": [child.pid for child in psutil.Process(self.gateway.process.pid).children()],
        }.get(path, [])
        found = []
        for pid in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                found += [root, *root.children(recursive=True)]
        return found


def cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def site_file(workdir: Path, ray_temp: str) -> Path:
    site = {
        "name": SITE,
        "ray": {
            "dashboard_port": free_port(),
            "metrics_export_port": free_port(),
            "temp_dir": ray_temp,
        },
        "serve": {"port": free_port()},
        "models": [simulated_model(MODEL, 0, 0, MAX_NUM_SEQS)],
    }
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def federation(workdir: Path, tunnel_port: int, public_key: str, compute_workers: int) -> dict:
    """The gateway's config: the one site three times, one transport each."""

    def endpoint(workers: int) -> dict:
        python = str(ENDPOINT_PYTHON)
        return {"kind": "endpoint-engine", "python": python, "workers": workers}

    ways = {
        "direct": ({"kind": "local"}, {"kind": "direct"}),
        "tunnel": (
            endpoint(1),
            {"kind": "ssh-tunnel", "port": tunnel_port, "public_key": public_key},
        ),
        "compute": (endpoint(compute_workers), {"kind": "globus-compute"}),
    }
    sites = [
        {
            "name": GATEWAY_SITES[path],
            "site": "site.yaml",
            "channel": {**channel, "poll_interval_s": POLL_INTERVAL_S},
            "transport": transport,
        }
        for path, (channel, transport) in ways.items()
    ]
    return {
        "auth": {"required": False},
        "limits": None,
        "ledger": {"enabled": False},
        "store": {"path": str(workdir / "first.db")},
        "sites": sites,
    }


def sites_up(url: str) -> bool:
    sites = httpx.get(f"{url}/health", timeout=10).json()["sites"]
    health = {site["name"]: site["health"] for site in sites}
    return all(health.get(name) == "up" for name in GATEWAY_SITES.values())


def model_url(federation_path: Path) -> str:
    """The model's endpoint at the site, where the gateway sends its requests."""
    config = load_federation(federation_path).sites[0].site_config
    status = site_status(config.model_dump(mode="json"))
    route = next(m["route"] for m in status["models"] if m["id"] == MODEL)
    return config.base_url.rstrip("/") + route


@contextlib.contextmanager
def running(workdir: Path, compute_workers: int) -> Iterator[Running]:
    """The site, the sshd and the site's connector, and the gateway, up; all stopped after
    (by their own process ids and groups), the site's Ray folder removed."""
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, ray_temp, ignore_errors=True)
        site_path = site_file(workdir, ray_temp)
        site = FirstProcess.start(["site", "up", "--config", str(site_path)], workdir, "site")
        stack.callback(site.stop)
        key_path, public_key = site_key(workdir, GATEWAY_SITES["tunnel"])
        port = free_port()
        config = federation(workdir, port, public_key, compute_workers)
        path = workdir / "federation-transports.yaml"
        path.write_text(yaml.safe_dump(config))
        sshd = Sshd.start(workdir / "sshd", authorized_keys(load_federation(path)))
        stack.callback(sshd.stop)
        log(f"sshd on 127.0.0.1:{sshd.port}; starting the site's connector (SOCKS port {port})")
        connect = ["site", "connect", "--gateway", f"{sshd.host}:{sshd.port}"]
        connect += ["--key", str(key_path), "--port", str(port), "--user", sshd.user]
        connect += ["--known-hosts", str(sshd.known_hosts())]
        connector = FirstProcess.start(connect, workdir, "connector")
        stack.callback(connector.stop)
        site.wait_ready(SITE_START_TIMEOUT_S)
        log("site up; starting the gateway (it starts both endpoints)")
        gateway, url = start_standalone_gateway(config, path, "gateway", timeout_s=180)
        stack.callback(gateway.stop)
        eventually(lambda: sites_up(url), 180, "all three sites up", retry_on=(httpx.HTTPError,))
        yield Running(url, model_url(path), gateway, sshd, connector)


async def check(session: aiohttp.ClientSession, path: str, req: Request) -> dict:
    """One answer read whole: 200, from the right site, `OUTPUT_TOKENS` output tokens."""
    async with session.post(req.url, data=req.payload, headers=HEADERS) as response:
        answer, status, site = await response.read(), response.status, response.headers
    if status != 200:
        raise SystemExit(f"{path} ({req.stream=}) got HTTP {status}: {answer[:300]!r}")
    tokens = output_tokens(answer, req.stream)
    expected = GATEWAY_SITES.get(path)
    if tokens != OUTPUT_TOKENS or site.get(SITE_HEADER) != expected:
        raise SystemExit(f"{path}: {tokens} output tokens from site {site.get(SITE_HEADER)}")
    return {"output_tokens": tokens, "answer_bytes": len(answer), "site": expected}


async def timed_cell(session, req: Request, concurrency: int, count: int, on: Running) -> dict:
    """The agent APIs benchmark's cell, with the CPU seconds of the path's carriers."""
    carriers = on.carriers(req.api)
    before = cpu_of(carriers)
    run = await cell(session, req, concurrency, count, on.gateway.process.pid)
    return {**run, "carrier_cpu_s": cpu_of(carriers) - before}


async def one_round(session, requests: dict, order: list[str], args, on: Running) -> dict:
    runs = {}
    for concurrency, mode in CELLS:
        p50s = []
        for path in order:
            if (path, mode) not in requests:
                continue
            count = args.requests[concurrency]
            run = await timed_cell(session, requests[(path, mode)], concurrency, count, on)
            runs[(path, mode, concurrency)] = run
            p50 = percentile([t.last_byte_ms for t in run["timings"]], 50)
            p50s.append(f"{path} {p50:.2f}")
        log(f"c={concurrency:<3} {mode:<12} p50 {', '.join(p50s)} ms")
    return runs


async def server_timings(session, req: Request, concurrency: int, count: int) -> dict:
    """Medians of the compute path's Server-Timing parts (ms) over `count` requests."""
    parts: dict[str, list[float]] = {}
    left = iter(range(count))

    async def client() -> None:
        for _ in left:
            async with session.post(req.url, data=req.payload, headers=HEADERS) as response:
                await response.read()
                for part in response.headers.get("server-timing", "").split(","):
                    name, _, value = part.strip().partition(";dur=")
                    parts.setdefault(name, []).append(float(value))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {name: round(statistics.median(values), 3) for name, values in parts.items()}


async def measure(on: Running, args) -> tuple[dict, dict, dict]:
    """Every path's answer checked, a warm-up, the rounds, the compute path's split:
    the checks, the cells' summaries and the Server-Timing medians."""
    requests = {
        (path, mode): request(path, base, mode == "streamed")
        for path, base in on.bases().items()
        for mode in ("non_streamed", "streamed")
        if mode == "non_streamed" or path != "compute"
    }
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        checked = {f"{p} {m}": await check(session, p, r) for (p, m), r in requests.items()}
        checked["carrier_processes"] = {
            path: sorted(" ".join(p.cmdline()[:3])[:80] for p in on.carriers(path))
            for path in ("tunnel", "compute")
        }
        log("every path answers; warming up")
        for (_, mode), req in requests.items():
            for concurrency, cell_mode in CELLS:
                if cell_mode == mode:
                    await timed_cell(session, req, concurrency, 4 * concurrency, on)
        runs: dict[tuple[str, str, int], list[dict]] = {}
        for repeat in range(args.rounds):
            log(f"round {repeat + 1}/{args.rounds}")
            order = list(PATHS[repeat % len(PATHS) :] + PATHS[: repeat % len(PATHS)])
            for key, run in (await one_round(session, requests, order, args, on)).items():
                runs.setdefault(key, []).append(run)
        compute = requests[("compute", "non_streamed")]
        split = {f"c{level}": await server_timings(session, compute, level, 4 * level + 60)
                 for level in (1, 32)}  # fmt: skip
    return checked, {key: summary(value) for key, value in runs.items()}, split


def summary(runs: list[dict]) -> dict:
    """The agent APIs benchmark's summary of a cell's rounds, with each round's requests per
    second and the carriers' CPU per request."""
    result = summarise(runs)
    carrier_s = sum(run["carrier_cpu_s"] for run in runs)
    return {
        **result,
        "round_requests_per_s": [round(len(run["timings"]) / run["wall_s"], 1) for run in runs],
        "carrier_cpu_ms_per_request": round(1000 * carrier_s / result["requests"], 3),
    }


def added_over_direct(cells: dict, concurrency: int, mode: str) -> dict:
    """Every other path against direct at `concurrency` in `mode`: p50, p99 (and a stream's
    first byte) differences, and the median of the rounds' own p50 differences."""
    direct = cells[("direct", mode, concurrency)]
    result = {}
    for path in PATHS:
        measured = cells.get((path, mode, concurrency))
        if path == "direct" or measured is None:
            continue
        pairs = zip(measured["round_p50_ms"], direct["round_p50_ms"], strict=True)
        result[path] = {
            "p50_ms": round(measured["p50_ms"] - direct["p50_ms"], 3),
            "p99_ms": round(measured["p99_ms"] - direct["p99_ms"], 3),
            "median_of_rounds_ms": round(statistics.median(a - d for a, d in pairs), 3),
        }
        if mode == "streamed":
            first = measured["first_byte_p50_ms"] - direct["first_byte_p50_ms"]
            result[path]["first_byte_p50_ms"] = round(first, 3)
    return result


def rates_over_direct(cells: dict, concurrency: int) -> dict:
    """Each path's requests per second over direct's at `concurrency`: the ratio of the
    medians, and the median of the rounds' own ratios."""
    direct = cells[("direct", "non_streamed", concurrency)]
    result = {}
    for path in PATHS:
        measured = cells[(path, "non_streamed", concurrency)]
        pairs = zip(measured["round_requests_per_s"], direct["round_requests_per_s"], strict=True)
        result[path] = {
            "ratio": round(measured["requests_per_s"] / direct["requests_per_s"], 3),
            "median_of_rounds": round(statistics.median(a / d for a, d in pairs), 3),
        }
    return result


def verdict(cells: dict, added: dict, rates: dict) -> dict:
    tunnel_added = added["c1"]["non_streamed"]["tunnel"]["p50_ms"]
    return {
        "tunnel_added_p50_at_1": tunnel_added < TUNNEL_ADDED_MS,
        "tunnel_requests_per_s_at_32": rates["tunnel"]["ratio"] >= TUNNEL_RATE_RATIO,
        "no_request_failed": all(c["failed"] == 0 for c in cells.values()),
    }


def result_of(checked: dict, cells: dict, split: dict, args) -> dict:
    added = {
        f"c{level}": {
            mode: added_over_direct(cells, level, mode) for lvl, mode in CELLS if lvl == level
        }
        for level in args.requests
    }
    rates = rates_over_direct(cells, max(args.requests))
    return {
        "what": "what the ssh-tunnel and globus-compute transports add over direct, one "
        "zero-delay simulated site behind one standalone gateway three ways, and the site alone",
        "targets": {
            "tunnel_added_p50_ms_at_1": TUNNEL_ADDED_MS,
            "tunnel_requests_per_s_over_direct_at_32": TUNNEL_RATE_RATIO,
            "compute": "recorded beside FIRST's published cost through the Globus cloud",
        },
        "first_globus_cloud_added_s": list(FIRST_CLOUD_ADDED_S),
        "site": {"engine": "simulated", "ttft_ms": 0, "tpot_ms": 0, "max_num_seqs": MAX_NUM_SEQS},
        "gateway": {"standalone": True, "auth": None, "limits": None, "ledger": False},
        "paths": {
            "site": "the site's own endpoint, no gateway",
            "direct": f"/sites/{GATEWAY_SITES['direct']}: transport direct",
            "tunnel": f"/sites/{GATEWAY_SITES['tunnel']}: ssh-tunnel, OpenSSH sshd on loopback, "
            "`first site connect`",
            "compute": f"/sites/{GATEWAY_SITES['compute']}: globus-compute, endpoint-engine "
            f"channel, {args.compute_workers} engine workers",
        },
        "request": {"prompt": PROMPT, "output_tokens": OUTPUT_TOKENS, "body": body(False)},
        "load": {
            "tool": "aiohttp, closed loop, in the benchmark's process",
            "rounds": args.rounds,
            "requests_per_cell_and_round": {f"c{k}": v for k, v in args.requests.items()},
        },
        "checked": checked,
        "cells": [
            {"path": path, "mode": mode, "concurrency": level, **measured}
            for (path, mode, level), measured in cells.items()
        ],
        "added_over_direct_ms": added,
        "requests_per_s_over_direct": {f"c{max(args.requests)}": rates},
        "compute_server_timing_p50_ms": split,
        "met": verdict(cells, added, rates),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/transports.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--requests",
        type=int,
        nargs=2,
        default=[REQUESTS[1], REQUESTS[32]],
        metavar=("AT_1", "AT_32"),
        help="Requests per path and cell a round, at concurrency 1 and at 32.",
    )
    parser.add_argument("--compute-workers", type=int, default=COMPUTE_WORKERS)
    args = parser.parse_args()
    args.requests = dict(zip((1, 32), args.requests, strict=True))
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-transports-"))
    log(f"starting the site, an sshd, the connector and the gateway; workdir {workdir}")
    started = time.monotonic()
    with running(workdir, args.compute_workers) as on:
        log(f"up after {time.monotonic() - started:.0f} s; the site's own endpoint {on.site_url}")
        target = Target(f"{on.bases()['compute']}{CHAT}", body(False))
        wait_until_answering(target, 60, "the compute path")
        checked, cells, split = asyncio.run(measure(on, args))
    result = result_of(checked, cells, split, args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out} after {time.monotonic() - started:.0f} s")
    for level, by_mode in result["added_over_direct_ms"].items():
        for mode, by_path in by_mode.items():
            log(
                f"{level} {mode}: added over direct p50 "
                + ", ".join(f"{p} {v['p50_ms']:+.3f} ms" for p, v in by_path.items())
            )
    log(f"requests/s over direct: {result['requests_per_s_over_direct']}; met {result['met']}")


if __name__ == "__main__":
    main()
