"""Batch against interactive: the same 1,000 requests both ways, tokens per second.

Starts `first gateway up` on the shipped embedded default (the local site
colocated, tiny-llama on vLLM's CPU build) with its own ports, Ray temp
folder and store, then:

- interactive: the 1,000 chat completions through the gateway with the
  official `openai` async client, at each concurrency in `--concurrency`,
  to find the best one;
- then `--repeats` rounds of: the same requests interactively at that best
  concurrency, and the same 1,000 lines uploaded (`files.create`) and run
  as one batch (`batches.create`), measured from `batches.create` to the
  Ray job submitted (status `in_progress`, polled every 0.1 s), to the
  first result, and to `completed`. Alternating keeps both paths on the
  same drift of a shared machine; the medians are compared.

Every request generates exactly `--max-tokens` tokens (`ignore_eos`), so
tokens per second compare the same work: completion tokens counted from
the responses (interactive) and from the output file (batch), over wall
time. The batch's time counts everything from `batches.create` to
`completed`: job start, the run, collecting the results and writing the
output file.

    python -m bench.batch_bench --out bench/results/batch.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
import yaml

from tests.support.processes import FirstProcess, free_port

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / ".first" / "models" / "tiny-llama"
MODEL = "tiny-llama"
API_KEY = "first-bench-batch-5e1d9c3b7a2f4e6d"
ENDED = ("completed", "failed", "cancelled", "expired")


def log(message: str) -> None:
    print(f"[batch-bench] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def bodies(count: int, max_tokens: int) -> list[dict]:
    topics = ["rivers", "stars", "proteins", "glaciers", "compilers", "bees", "tides", "maps"]
    return [
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": f"Tell me about {topics[i % len(topics)]}, part {i}."}
            ],
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
        for i in range(count)
    ]


def write_federation(workdir: Path, ray_temp: str) -> Path:
    federation = yaml.safe_load((REPO / "cluster_configs" / "local-federation.yaml").read_text())
    federation["gateway"]["port"] = free_port()
    federation["gateway"]["ray"].update(
        dashboard_port=free_port(), metrics_export_port=free_port(), temp_dir=ray_temp
    )
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["models"][0]["source"] = str(TINY_MODEL)
    # The chat models only; no RAG collections (the embedding model is not started).
    site["models"] = [m for m in site["models"] if m["id"] != "tiny-embed"]
    federation.pop("rag", None)
    # One replica throughout: both paths meet the same engine, however much load they make.
    site["models"][0]["autoscaling"] = {"preset": "hot", "max_replicas": 1}
    federation["sites"][0]["site"] = site
    federation["store"] = {"path": str(workdir / "first.db")}
    federation["limits"] = None
    federation["ledger"] = {"enabled": False}
    path = workdir / "federation.yaml"
    path.write_text(yaml.safe_dump(federation))
    return path


async def interactive(url: str, requests: list[dict], concurrency: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    pending = iter(requests)
    tokens = failures = 0

    async def worker() -> None:
        nonlocal tokens, failures
        for body in pending:
            try:
                fields = {k: v for k, v in body.items() if k != "ignore_eos"}
                response = await client.chat.completions.create(
                    **fields, extra_body={"ignore_eos": True}
                )
                tokens += response.usage.completion_tokens
            except openai.APIError:
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    await client.close()
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "failures": failures,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(requests) / wall, 1),
    }


def batch(url: str, requests: list[dict]) -> dict:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    lines = [
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        )
        for i, b in enumerate(requests)
    ]
    upload_started = time.monotonic()
    file = client.files.create(file=("bench.jsonl", "\n".join(lines).encode()), purpose="batch")
    upload_s = time.monotonic() - upload_started
    created = time.monotonic()
    current = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    running_s = first_result_s = None
    while current.status not in ENDED:
        time.sleep(0.1)
        current = client.batches.retrieve(current.id)
        now = time.monotonic() - created
        if running_s is None and current.status == "in_progress":
            running_s = now
        if first_result_s is None and current.request_counts.completed:
            first_result_s = now
    wall = time.monotonic() - created
    outputs = client.files.content(current.output_file_id).text.splitlines()
    tokens = sum(
        json.loads(line)["response"]["body"]["usage"]["completion_tokens"] for line in outputs
    )
    return {
        "requests": len(requests),
        "status": current.status,
        "completed": current.request_counts.completed,
        "failed": current.request_counts.failed,
        "completion_tokens": tokens,
        "upload_s": round(upload_s, 2),
        "create_to_running_s": round(running_s, 2) if running_s is not None else None,
        "create_to_first_result_s": round(first_result_s, 2) if first_result_s else None,
        "create_to_completed_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(requests) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/batch.json"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument(
        "--repeats", type=int, default=3, help="Rounds of interactive (best) and batch."
    )
    args = parser.parse_args()
    if not (TINY_MODEL / "config.json").exists():
        raise SystemExit(f"{TINY_MODEL} is missing: run `make {TINY_MODEL.relative_to(REPO)}`")
    out = args.out.resolve()
    os.chdir(REPO)
    date = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="first-batchbench-", dir="/tmp"))
    ray_temp = tempfile.mkdtemp(prefix="first-ray-", dir="/tmp")
    gateway = FirstProcess.start(
        [
            "gateway",
            "up",
            "--config",
            str(write_federation(workdir, ray_temp)),
            "--with-key",
            "bench",
        ],
        workdir,
        "gateway",
        env={"FIRST_API_KEY": API_KEY},
    )
    requests = bodies(args.requests, args.max_tokens)
    try:
        log(f"starting the gateway with the local site (workdir {workdir})")
        url = gateway.wait_ready(600)
        log("warming up: 64 requests")
        asyncio.run(interactive(url, requests[:64], 16))
        runs = []
        for concurrency in args.concurrency:
            run = asyncio.run(interactive(url, requests, concurrency))
            log(f"interactive, {concurrency} concurrent: {run['tokens_per_s']} tokens/s")
            runs.append(run)
        best = max(runs, key=lambda r: r["tokens_per_s"])["concurrency"]
        # Rounds of (interactive at the best concurrency, batch), so that both see the
        # same drift of a shared machine.
        rounds = []
        for number in range(args.repeats):
            again = asyncio.run(interactive(url, requests, best))
            result = batch(url, requests)
            log(
                f"round {number + 1}: interactive {again['tokens_per_s']} tokens/s, batch "
                f"{result['tokens_per_s']} tokens/s (running after "
                f"{result['create_to_running_s']} s, completed after "
                f"{result['create_to_completed_s']} s)"
            )
            rounds.append({"interactive": again, "batch": result})
    finally:
        gateway.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)
    interactive_median = statistics.median(r["interactive"]["tokens_per_s"] for r in rounds)
    batch_median = statistics.median(r["batch"]["tokens_per_s"] for r in rounds)
    report = {
        "what": f"{args.requests} chat completions of {args.max_tokens} tokens each "
        "(ignore_eos) to tiny-llama (vLLM, CPU) through the gateway: interactive at several "
        "concurrencies against one batch (Batch API, a Ray job at the colocated site)",
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "description": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_1m_at_start": round(load_start[0], 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "setup": {
            "site": "cluster_configs/local.yaml, colocated (make run's default), tiny-llama "
            "held at one replica",
            "batch_concurrency": "the site's batch.concurrency (default 256)",
            "interactive_client": "openai.AsyncOpenAI, max_retries 0",
        },
        "summary": {
            "best_interactive_concurrency": best,
            "interactive_tokens_per_s_median": interactive_median,
            "batch_tokens_per_s_median": batch_median,
            "batch_over_interactive": round(batch_median / interactive_median, 2),
            "batch_at_least_as_fast": batch_median >= interactive_median,
            "create_to_running_s": [r["batch"]["create_to_running_s"] for r in rounds],
            "create_to_first_result_s": [r["batch"]["create_to_first_result_s"] for r in rounds],
        },
        "concurrency_sweep": runs,
        "rounds": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}: {json.dumps(report['summary'])}")


if __name__ == "__main__":
    main()
