"""`first rag`: build collections from files, ask them questions, list and drop them.

A client of the gateway's RAG routes (`/v1/rag/...`) like any other: the
files are read here (Markdown, text; PDF through pypdf), sent as documents,
and chunked, embedded and stored by the gateway, so `first rag ingest`
works against any FIRST gateway (`--url`, `--api-key`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import httpx

from serve_app.cli.client import API_KEY_OPTION, URL_OPTION, GatewayClient
from serve_app.cli.common import echo

SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".pdf"}
DOCUMENTS_PER_REQUEST = 16


def document_files(paths: list[Path]) -> list[Path]:
    """The files to ingest: each file given, and those of each folder (recursively) with
    a known suffix, hidden ones skipped, in order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise click.ClickException(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def read_document(path: Path) -> dict | None:
    """The file as a document (id: its path, relative to here when below it); None for a
    file with no text (a scanned PDF)."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            pages = PdfReader(path).pages
            text = "\n\n".join(page.extract_text() or "" for page in pages)
        except (PdfReadError, OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: not a readable PDF ({exc})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise click.ClickException(f"{path}: not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        document_id = path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        document_id = path.resolve().as_posix()
    title = next(
        (line.lstrip("#").strip() for line in text.splitlines() if line.startswith("# ")),
        path.stem,
    )
    return {"id": document_id, "title": title, "text": text}


def ingest_files(
    gateway: GatewayClient,
    collection: str,
    paths: list[Path],
    embedding_model: str | None,
    progress: bool = True,
) -> dict[str, int]:
    """Send every file under `paths` to the collection; the totals of the answers."""
    from tqdm import tqdm

    files = document_files(paths)
    if not files:
        raise click.ClickException(
            "no Markdown, text or PDF files under " + ", ".join(map(str, paths))
        )
    totals = {"documents": 0, "changed": 0, "unchanged": 0, "chunks_added": 0, "chunks": 0}
    with tqdm(total=len(files), unit="doc", file=sys.stderr, disable=not progress) as bar:
        for batch in _batches(files, DOCUMENTS_PER_REQUEST):
            documents = [d for path in batch if (d := read_document(path)) is not None]
            if documents:
                body: dict = {"documents": documents}
                if embedding_model:
                    body["embedding_model"] = embedding_model
                answer = gateway.post_json(f"/v1/rag/collections/{collection}/documents", body)
                for key in ("documents", "changed", "unchanged", "chunks_added"):
                    totals[key] += answer[key]
                totals["chunks"] = answer["chunks"]
            bar.update(len(batch))
    return totals


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@click.group()
def rag() -> None:
    """RAG collections: ingest files, ask questions answered from them, list, drop."""


@rag.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--collection", required=True, help="The collection (made if new).")
@click.option(
    "--embedding-model",
    help="For a new collection: the model that embeds it (default: the gateway's "
    "rag.embedding_model).",
)
@URL_OPTION
@API_KEY_OPTION
def ingest(
    paths: tuple[Path, ...],
    collection: str,
    embedding_model: str | None,
    url: str,
    api_key: str | None,
) -> None:
    """Add the files under PATHS (Markdown, text, PDF) to a collection; files already
    there unchanged are skipped, changed ones replaced."""
    gateway = GatewayClient(url, api_key, timeout_s=600)
    totals = ingest_files(gateway, collection, list(paths), embedding_model)
    echo(
        f"{collection}: {totals['documents']} documents ({totals['changed']} new or changed, "
        f"{totals['unchanged']} unchanged), {totals['chunks_added']} chunks embedded, "
        f"{totals['chunks']} in the collection"
    )


@rag.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@URL_OPTION
@API_KEY_OPTION
def list_collections(as_json: bool, url: str, api_key: str | None) -> None:
    """The collections, with their embedding model and size."""
    answer = GatewayClient(url, api_key).get_json("/v1/rag/collections")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    for c in answer["data"]:
        click.echo(
            f"{c['id']}\t{c['documents']} documents\t{c['chunks']} chunks\t{c['embedding_model']}"
        )


@rag.command("drop")
@click.argument("collection")
@URL_OPTION
@API_KEY_OPTION
def drop(collection: str, url: str, api_key: str | None) -> None:
    """Drop a collection and its chunks."""
    GatewayClient(url, api_key).call("DELETE", f"/v1/rag/collections/{collection}")
    echo(f"dropped {collection}")


@rag.command("query")
@click.argument("question")
@click.option("--collection", required=True, help="The collection to answer from.")
@click.option("--model", help="The chat model (or tribunal); without it, only the search.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--top-k", type=click.IntRange(1, 50), help="Chunks to answer from.")
@URL_OPTION
@API_KEY_OPTION
def query(  # noqa: PLR0913 (click options)
    question: str,
    collection: str,
    model: str | None,
    max_tokens: int,
    top_k: int | None,
    url: str,
    api_key: str | None,
) -> None:
    """Answer QUESTION from the collection (streamed), then list the sources cited; with
    no --model, print the chunks the search finds."""
    gateway = GatewayClient(url, api_key, timeout_s=600)
    if model is None:
        body = {"query": question, **({"top_k": top_k} if top_k else {})}
        found = gateway.post_json(f"/v1/rag/collections/{collection}/search", body)
        for source in found["data"]:
            click.echo(
                f"[{source['index']}] {source['score']:.4f} {source['title']} ({source['id']})"
            )
        echo(f"retrieval took {found['retrieval_s'] * 1000:.0f} ms")
        return
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": True,
        **({"first_sources": top_k} if top_k else {}),
    }
    sources: list[dict] = []
    for event in _stream(gateway, f"/v1/rag/{collection}/chat/completions", body):
        if "error" in event:
            raise click.ClickException(event["error"].get("message", "the answer failed"))
        sources = event.get("first_sources") or sources
        for choice in event.get("choices") or []:
            click.echo((choice.get("delta") or {}).get("content") or "", nl=False)
    click.echo()
    for source in sources:
        click.echo(f"[{source['index']}] {source['title']} ({source['document']})")


def _stream(gateway: GatewayClient, path: str, body: dict) -> Iterator[dict]:
    """The data events of a streamed answer; a refusal is a one-line error."""
    try:
        with gateway.http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                response.read()
                gateway.raise_for(response)
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    yield json.loads(line[len("data: ") :])
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {gateway.http.base_url}: {exc}") from None
