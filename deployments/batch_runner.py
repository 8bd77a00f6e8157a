"""The Ray job that runs one batch at a site: every line through the model's deployment there.

The job sends the lines to the site's own OpenAI endpoint (the Serve proxy
of the Ray cluster it runs in), `concurrency` at a time. It does not start
an engine of its own: the model's deployment already holds the site's
accelerators and a warm engine, and vLLM's continuous batching turns many
requests in flight into full engine batches. Batch and interactive work
share that engine, Serve autoscales it on their sum, and a batch line gets
exactly the answer (and the error) the same request would get interactively.

The input travels with the job (its working directory, uploaded by Ray's
Job Submission API); the results leave through the job's log, one marked
line each, which the site's batch functions read back through the Ray
dashboard. Neither needs a filesystem shared with the gateway.

Run by `deployments.batch_jobs.submit`; by hand:
`python -m deployments.batch_runner --base-url URL --endpoint /v1/chat/completions`
in a folder holding `input-*.jsonl`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp

RESULT_MARK = "FIRST-BATCH-RESULT "
DONE_MARK = "FIRST-BATCH-DONE "
# Answers worth another try: the site is busy or briefly without a replica.
RETRYABLE = {408, 429, 500, 502, 503, 504}


def read_input(folder: Path) -> Iterator[dict]:
    """The job's lines, `{"index", "custom_id", "body"}` each, from its input parts in order."""
    for part in sorted(folder.glob("input-*.jsonl")):
        with part.open() as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


class BatchRun:
    def __init__(self, base_url: str, endpoint: str, retries: int, timeout_s: float):
        self.url = base_url.rstrip("/") + endpoint
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.seq = 0

    def emit(self, index: int, kind: str, line: dict) -> None:
        """One result to the log; `seq` lets a reader resume after the results it has."""
        self.seq += 1
        record = {"seq": self.seq, "index": index, "kind": kind, "line": line}
        sys.stdout.write(RESULT_MARK + json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    async def run_one(self, session: aiohttp.ClientSession, item: dict) -> None:
        line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": item["custom_id"]}
        error = None
        for attempt in range(self.retries + 1):
            try:
                async with session.post(self.url, json=item["body"]) as response:
                    body = await response.json(content_type=None)
                    status, request_id = response.status, response.headers.get("x-request-id")
                    retry_after = response.headers.get("retry-after", "")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = {"code": "site_error", "message": f"{type(exc).__name__}: {exc}"}
                status, retry_after = None, ""
            else:
                error = None
                if status not in RETRYABLE:
                    break
            if attempt < self.retries:
                delay = float(retry_after) if retry_after.isdigit() else 2.0**attempt
                await asyncio.sleep(min(delay, 30.0))
        if error is not None:
            self.emit(item["index"], "error", {**line, "response": None, "error": error})
            return
        response = {"status_code": status, "request_id": request_id, "body": body}
        kind = "output" if status == 200 else "error"
        self.emit(item["index"], kind, {**line, "response": response, "error": None})

    async def run(self, items: Iterator[dict], concurrency: int) -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout) as session:

            async def worker() -> None:
                for item in items:  # shared: each worker takes the next line
                    await self.run_one(session, item)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        sys.stdout.write(DONE_MARK + json.dumps({"results": self.seq}) + "\n")
        sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    run = BatchRun(args.base_url, args.endpoint, args.retries, args.timeout_s)
    task = asyncio.ensure_future(run.run(read_input(Path.cwd()), args.concurrency))
    # `ray job stop` sends SIGTERM: stop at once; every result so far is in the log.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        print(f"stopped after {run.seq} results", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="The site's (or job's) Serve URL.")
    parser.add_argument("--endpoint", required=True, help="/v1/chat/completions and so on.")
    parser.add_argument("--concurrency", type=int, default=256, help="Requests in flight.")
    parser.add_argument("--retries", type=int, default=3, help="Tries again after a 429/5xx.")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="One request, at most.")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
