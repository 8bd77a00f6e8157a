"""`first batch`: submit a JSONL file as a batch, follow it, cancel it, fetch its results.

A client of the gateway's Files and Batches API like any other (the same
calls the `openai` client makes), so it works against any FIRST gateway:
`--url` (or $FIRST_URL) and `--api-key` (or $FIRST_API_KEY).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from serve_app.cli.client import API_KEY_OPTION, URL_OPTION, GatewayClient

TERMINAL = ("completed", "failed", "cancelled", "expired")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _out(help_text: str):
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help=help_text,
    )


@click.group()
def batch() -> None:
    """Run a JSONL file of requests as a batch (OpenAI's Batch API) and fetch the results."""


def prepare_lines(path: Path, model: str | None, endpoint: str) -> bytes:
    """The file as the Batch API takes it: `method` and `url` filled in, `model` set if given.

    Lines may be full Batch API lines or just `{"custom_id", "body"}`.
    """
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            line.setdefault("method", "POST")
            line.setdefault("url", endpoint)
            if model is not None:
                line["body"]["model"] = model
        except (ValueError, TypeError, KeyError, AttributeError):
            raise click.ClickException(
                f"{path}:{number}: not a request line (a JSON object with a `body` object)"
            ) from None
        out.append(json.dumps(line))
    return ("\n".join(out) + "\n").encode()


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="Run every line on this model (replaces the lines' own).")
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default="/v1/chat/completions",
    show_default=True,
    help="For lines without a `url`.",
)
@click.option("--wait", is_flag=True, help="Follow the batch with a progress bar, then download.")
@_out("With --wait: where the output and error files go.")
@URL_OPTION
@API_KEY_OPTION
def submit(  # noqa: PLR0913 (click options)
    file: Path,
    model: str | None,
    endpoint: str,
    wait: bool,
    out: Path,
    url: str,
    api_key: str | None,
) -> None:
    """Upload FILE (JSONL, one request per line) and start it as a batch; print its id."""
    gateway = GatewayClient(url, api_key)
    content = prepare_lines(file, model, endpoint)
    uploaded = gateway.call(
        "POST", "/v1/files", files={"file": (file.name, content)}, data={"purpose": "batch"}
    ).json()
    lines = json.loads(content.splitlines()[0])
    created = gateway.call(
        "POST",
        "/v1/batches",
        json={"input_file_id": uploaded["id"], "endpoint": lines["url"]},
    ).json()
    click.echo(created["id"])
    if wait:
        finished = follow(gateway, created["id"])
        download_results(gateway, finished, out)
        if finished["status"] != "completed":
            raise click.ClickException(f"batch {finished['id']} ended {finished['status']}")


def follow(gateway: GatewayClient, batch_id: str, interval_s: float = 2.0) -> dict:
    """Poll until the batch ends, with a progress bar of lines answered."""
    from tqdm import tqdm

    current = gateway.get_json(f"/v1/batches/{batch_id}")
    with tqdm(total=current["request_counts"]["total"], unit="req", desc=current["status"]) as bar:
        while True:
            counts = current["request_counts"]
            bar.set_description(current["status"])
            bar.set_postfix(failed=counts["failed"])
            bar.update(counts["completed"] + counts["failed"] - bar.n)
            if current["status"] in TERMINAL:
                return current
            time.sleep(interval_s)
            current = gateway.get_json(f"/v1/batches/{batch_id}")


def download_results(gateway: GatewayClient, batch_data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for field in ("output_file_id", "error_file_id"):
        file_id = batch_data.get(field)
        if not file_id:
            continue
        path = out / f"{batch_data['id']}_{field.removesuffix('_file_id')}.jsonl"
        path.write_bytes(gateway.call("GET", f"/v1/files/{file_id}/content").content)
        click.echo(f"[first] {path}", err=True)


@batch.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole batch object.")
@URL_OPTION
@API_KEY_OPTION
def status(batch_id: str, as_json: bool, url: str, api_key: str | None) -> None:
    """Show a batch's status and request counts."""
    data = GatewayClient(url, api_key).get_json(f"/v1/batches/{batch_id}")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    counts = data["request_counts"]
    click.echo(
        f"{data['id']} {data['status']} model={data.get('model')} "
        f"total={counts['total']} completed={counts['completed']} failed={counts['failed']}"
    )


@batch.command("cancel")
@click.argument("batch_id")
@URL_OPTION
@API_KEY_OPTION
def cancel(batch_id: str, url: str, api_key: str | None) -> None:
    """Cancel a batch; what already ran stays in its output file."""
    data = GatewayClient(url, api_key).call("POST", f"/v1/batches/{batch_id}/cancel").json()
    click.echo(f"{data['id']} {data['status']}")


@batch.command("download")
@click.argument("batch_id")
@_out("Folder for BATCH_output.jsonl and BATCH_error.jsonl.")
@URL_OPTION
@API_KEY_OPTION
def download(batch_id: str, out: Path, url: str, api_key: str | None) -> None:
    """Fetch a finished batch's output and error files."""
    gateway = GatewayClient(url, api_key)
    data = gateway.get_json(f"/v1/batches/{batch_id}")
    if data["status"] not in TERMINAL:
        raise click.ClickException(f"batch {batch_id} is {data['status']}; nothing to fetch yet")
    download_results(gateway, data, out)
