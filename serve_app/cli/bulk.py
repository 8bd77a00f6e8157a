"""`first bulk FILE.jsonl`: conversations in, answers out, over every site at once.

Each line of FILE is one conversation: a JSON list of messages, or an object
with `messages` (and, to tell the answers apart, a `custom_id`). They go to
the gateway as bulk chat completions (`POST /v1/chat/completions/batch`) of
`--chunk` conversations, `--parallel` of those at once, so the gateway keeps
every site serving the model busy; answers come out as JSONL in the input's
order. For files too large to wait for, or that must go on when this
command does not, `first batch submit` uses the Batch API instead.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import click

from serve_app.cli.client import API_KEY_OPTION, URL_OPTION, GatewayClient
from serve_app.cli.common import echo

BULK = "/v1/chat/completions/batch"


def read_conversations(path: Path) -> list[tuple[object, list]]:
    """(custom_id or None, messages) per non-blank line; a bad line is a one-line error."""
    conversations = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise click.ClickException(f"{path}:{number}: not JSON") from None
        custom_id, messages = None, line
        if isinstance(line, dict):
            custom_id, messages = line.get("custom_id"), line.get("messages")
        if not isinstance(messages, list) or not messages:
            raise click.ClickException(
                f"{path}:{number}: not a conversation (a list of messages, or an object "
                "with `messages`)"
            )
        conversations.append((custom_id, messages))
    if not conversations:
        raise click.ClickException(f"{path}: no conversations")
    return conversations


@click.command("bulk")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="The model to answer with.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens of each answer.")
@click.option("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature.")
@click.option(
    "--out",
    type=click.File("w"),
    default="-",
    show_default=True,
    help="Where the answers go, one JSON line per conversation (- : stdout).",
)
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Conversations per bulk request (at most the gateway's bulk.max_items).",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Bulk requests in flight at once: the next starts while one finishes its last few.",
)
@URL_OPTION
@API_KEY_OPTION
def bulk(  # noqa: PLR0913 (click options)
    file: Path,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    out: IO[str],
    chunk: int,
    parallel: int,
    url: str,
    api_key: str | None,
) -> None:
    """Answer every conversation of FILE (JSONL) with bulk chat completions.

    Each output line has the conversation's `index` (its line among the
    conversations, from 0), its `custom_id` if it had one, and the answer's
    `message` and `finish_reason`, or its `error`. Exits non-zero if any
    conversation failed.
    """
    from tqdm import tqdm

    conversations = read_conversations(file)
    shared = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    shared = {key: value for key, value in shared.items() if value is not None}
    gateway = GatewayClient(url, api_key, timeout_s=3600)
    starts = range(0, len(conversations), chunk)

    def answer(start: int) -> dict:
        messages = [messages for _, messages in conversations[start : start + chunk]]
        return gateway.post_json(BULK, {**shared, "messages": messages})

    failed = tokens = 0
    with (
        ThreadPoolExecutor(parallel) as pool,
        tqdm(total=len(conversations), unit="conv", file=sys.stderr) as bar,
    ):
        try:
            # map keeps the chunks in order however they finish.
            for start, answered in zip(starts, pool.map(answer, starts), strict=True):
                for choice in answered["choices"]:
                    index = start + choice["index"]
                    custom_id = conversations[index][0]
                    line = {"index": index, **({"custom_id": custom_id} if custom_id else {})}
                    line |= {key: choice.get(key) for key in ("message", "finish_reason", "error")}
                    out.write(json.dumps(line) + "\n")
                    failed += choice.get("error") is not None
                tokens += answered["usage"].get("completion_tokens") or 0
                bar.update(len(answered["choices"]))
                bar.set_postfix(failed=failed)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # a refusal: the rest would be too
            raise
    out.flush()
    echo(f"{len(conversations)} conversations, {failed} failed, {tokens} completion tokens")
    if failed:
        raise click.ClickException(
            f"{failed} of {len(conversations)} conversations failed (their `error` is in the output)"
        )
