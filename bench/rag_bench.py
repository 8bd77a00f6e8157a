"""RAG collections: ingestion rate, how its embeddings spread over sites, query latency.

Two simulated sites (bench/README.md), east and west, on one Serve-hosted
stack serve the same two models: an embedding model (the simulated engine
answers /v1/embeddings with the inputs' words hashed into `EMBEDDING_DIM`
buckets, after one first token's time per request) and a chat model. One
standalone gateway (open, no rate limits) fronts them with `rag.path` in the
benchmark's folder. From an aiohttp client in this process:

- ingestion: the project's `docs/` (its Markdown files read as `first rag
  ingest` reads them, `serve_app/cli/rag.py`, posted 16 documents a request
  to `POST /v1/rag/collections/{name}/documents`), `--docs-repeats` times
  into fresh collections (3; 1 with `--quick`), then a larger corpus: docs/
  copied under other ids up to `--corpus-chunks` chunks (2,000; 500 with
  `--quick`), in one collection. Reported: chunks per second (the median
  docs/ run; the corpus as a whole and by halves, since each request
  re-indexes the collection), and which sites answered the embedding slices
  (the gateway's `first_requests_total` by site on /v1/embeddings, read
  before and after). The yardstick: the same chunks' texts (chunked here
  with the gateway's own chunker and settings) sent straight to the
  gateway's `/v1/embeddings`, one request per ingestion request, which the
  gateway slices as ingestion does: what is left is chunking and the store.
- queries: `--questions` questions (50; 10 with `--quick`) made from the
  docs' section headings, asked of the docs/ collection and of the corpus,
  each as a search (`POST /v1/rag/collections/{name}/search`: the client's
  time and the gateway's `retrieval_s`, against the question alone sent to
  `/v1/embeddings`), as a RAG chat completion (`POST
  /v1/rag/{name}/chat/completions`, `max_tokens` fixed: generation is its
  time less the search's), and as the same chat completion without RAG.
  Reported: p50/p99 of each.

No target but to record these; "met" says only that every request
succeeded and each ingestion stored as many chunks as the chunker makes.

`python -m bench.rag_bench [--quick]`; `make bench-rag`; part of `make bench`
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
    REPO,
    requests_by_site,
    running_stack,
    simulated_model,
    sites_stack,
    standalone_gateway,
)
from bench.overload_bench import latency
from bench.tribunal_bench import post
from serve_app.cli.rag import DOCUMENTS_PER_REQUEST, document_files, read_document
from serve_app.config import BulkConfig, RagConfig
from serve_app.workflows.rag.chunking import chunk_document
from tests.support.processes import FirstProcess, start_standalone_gateway

EMBED, CHAT_MODEL = "sim-embed", "sim-rag-chat"
SITES = ("east", "west")
EMBEDDING_DIM = 64
EMBED_TTFT_MS, CHAT_TTFT_MS, CHAT_TPOT_MS, MAX_NUM_SEQS = 20.0, 50.0, 10.0, 8
MAX_TOKENS = 16
DOCS = REPO / "docs"
DOCS_REPEATS, QUICK_DOCS_REPEATS = 3, 1
CORPUS_CHUNKS, QUICK_CORPUS_CHUNKS = 2000, 500
QUESTIONS, QUICK_QUESTIONS = 50, 10
EMBEDDINGS, CHAT = "/v1/embeddings", "/v1/chat/completions"
TRUNCATE_TO_CONTEXT = {"truncate_prompt_tokens": -1}  # as the gateway's ingestion sends
TIMEOUT_S = 600


def site(name: str) -> dict:
    embedder = simulated_model(EMBED, EMBED_TTFT_MS, 0.0, MAX_NUM_SEQS)
    embedder["engine_kwargs"]["embedding_dim"] = EMBEDDING_DIM
    chat = simulated_model(CHAT_MODEL, CHAT_TTFT_MS, CHAT_TPOT_MS, MAX_NUM_SEQS)
    return {"name": name, "models": [embedder, chat]}


# -- the corpus ------------------------------------------------------------------


def docs() -> list[dict]:
    """docs/ as `first rag ingest` sends it."""
    return [d for path in document_files([DOCS]) if (d := read_document(path)) is not None]


def copies(documents: list[dict], count: int) -> list[dict]:
    return [{**d, "id": f"copy-{k}/{d['id']}"} for k in range(count) for d in documents]


def batches(documents: list[dict]) -> list[list[dict]]:
    size = DOCUMENTS_PER_REQUEST
    return [documents[at : at + size] for at in range(0, len(documents), size)]


def chunk_texts(batch: list[dict], rag: RagConfig) -> list[str]:
    """What the gateway embeds for these documents: every chunk's heading path and text."""
    return [
        chunk.indexed()
        for document in batch
        for chunk in chunk_document(document["text"], rag.chunk_chars, rag.overlap_chars)
    ]


def questions(documents: list[dict], count: int) -> list[str]:
    """`count` questions, one per section heading of the documents in turn."""
    headings = [
        line.lstrip("#").strip()
        for document in documents
        for line in document["text"].splitlines()
        if line.startswith("## ")
    ]
    return [
        f"What does the documentation say about {headings[i % len(headings)].lower()}?"
        for i in range(count)
    ]


# -- requests --------------------------------------------------------------------


async def embedding_slices(session: aiohttp.ClientSession, base: str) -> Counter:
    return await requests_by_site(session, base, EMBED, EMBEDDINGS)


def rate(chunks: int, ms: float) -> float:
    return round(chunks / (ms / 1000), 1) if ms > 0 else 0.0


async def timed(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict, float]:
    """`post`, its time in ms."""
    status, answer, seconds = await post(session, url, body)
    return status, answer, seconds * 1000


async def ingest(session, base: str, collection: str, requests: list[list[dict]]) -> dict:
    """Every batch as one ingestion request, one after another."""
    url = f"{base}/v1/rag/collections/{collection}/documents"
    done, errors = [], []
    for batch in requests:
        body = {"documents": batch, "embedding_model": EMBED}
        status, answer, ms = await timed(session, url, body)
        if status != 200:
            errors.append(f"HTTP {status}: {str(answer)[:300]}")
            continue
        added, after = answer["chunks_added"], answer["chunks"]
        done.append({"ms": round(ms, 1), "chunks_added": added, "chunks_after": after})
    ms = sum(r["ms"] for r in done)
    chunks = sum(r["chunks_added"] for r in done)
    half = len(done) // 2
    halves = [done[:half], done[half:]] if half else [done]
    return {
        "requests": len(requests),
        "failed": len(errors),
        "errors": errors[:3],
        "chunks": chunks,
        "seconds": round(ms / 1000, 3),
        "chunks_per_s": rate(chunks, ms),
        "chunks_per_s_by_half": [
            rate(sum(r["chunks_added"] for r in h), sum(r["ms"] for r in h)) for h in halves
        ],
        "per_request": done,
    }


async def embed_alone(session, base: str, texts: list[list[str]]) -> dict:
    """The same chunks' texts straight to /v1/embeddings, one request per ingestion one."""
    done, errors = [], []
    for inputs in texts:
        body = {"model": EMBED, "input": inputs, **TRUNCATE_TO_CONTEXT}
        status, answer, ms = await timed(session, f"{base}{EMBEDDINGS}", body)
        if status != 200 or len(answer.get("data", ())) != len(inputs):
            errors.append(f"HTTP {status}: {str(answer)[:300]}")
            continue
        done.append((ms, len(inputs)))
    ms = sum(m for m, _ in done)
    return {
        "requests": len(texts),
        "failed": len(errors),
        "errors": errors[:3],
        "seconds": round(ms / 1000, 3),
        "chunks_per_s": rate(sum(n for _, n in done), ms),
    }


async def ingestion(session, base: str, collection: str, documents: list, rag: RagConfig) -> dict:
    """Ingest `documents`, counting the embedding slices by site; then the yardstick."""
    requests = batches(documents)
    texts = [chunk_texts(batch, rag) for batch in requests]
    before = await embedding_slices(session, base)
    run = await ingest(session, base, collection, requests)
    after = await embedding_slices(session, base)
    by_site = {name: int(after[name] - before[name]) for name in sorted(after | before)}
    served = max(sum(by_site.get(name, 0) for name in SITES), 1)
    alone = await embed_alone(session, base, texts)
    alone_rate = alone["chunks_per_s"]
    run |= {
        "collection": collection,
        "documents": len(documents),
        "chunks_expected": sum(map(len, texts)),
        "embedding_requests_by_site": by_site,
        "embedding_share": {name: round(by_site.get(name, 0) / served, 3) for name in SITES},
        "embeddings_alone": alone,
        "over_embeddings_alone": round(run["chunks_per_s"] / alone_rate, 3) if alone_rate else None,
    }
    log(
        f"ingested {collection}: {run['chunks']} chunks in {run['seconds']} s, "
        f"{run['chunks_per_s']} chunks/s (by half {run['chunks_per_s_by_half']}); embeddings "
        f"alone {alone['chunks_per_s']} chunks/s; slices by site {by_site}"
    )
    return run


async def ask(session, base: str, collection: str, question: str) -> dict:
    """One question: the search, the question's embedding alone, the RAG chat completion
    and the plain one, each timed."""
    search_status, found, search_ms = await timed(
        session, f"{base}/v1/rag/collections/{collection}/search", {"query": question}
    )
    chat = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
    }
    rag_status, answered, rag_ms = await timed(
        session, f"{base}/v1/rag/{collection}/chat/completions", chat
    )
    plain_status, _, plain_ms = await timed(session, f"{base}{CHAT}", chat)
    embedding = {"model": EMBED, "input": [question], **TRUNCATE_TO_CONTEXT}
    embed_status, _, embed_ms = await timed(session, f"{base}{EMBEDDINGS}", embedding)
    statuses = (search_status, rag_status, plain_status, embed_status)
    ok = statuses == (200, 200, 200, 200) and bool(answered.get("first_sources"))
    return {
        "ok": ok,
        "statuses": statuses,
        "search_ms": search_ms,
        "retrieval_ms": found.get("retrieval_s", 0.0) * 1000,
        "query_embedding_ms": embed_ms,
        "hits": len(found.get("data", ())),
        "rag_chat_ms": rag_ms,
        "generation_ms": rag_ms - search_ms,
        "plain_chat_ms": plain_ms,
    }


async def queries(session, base: str, collection: str, asked: list[str]) -> dict:
    answers = [await ask(session, base, collection, question) for question in asked]
    ok = [a for a in answers if a["ok"]]
    keys = (
        "search_ms", "retrieval_ms", "query_embedding_ms",
        "rag_chat_ms", "generation_ms", "plain_chat_ms",
    )  # fmt: skip
    run = {
        "collection": collection,
        "questions": len(asked),
        "failed": len(answers) - len(ok),
        "failed_statuses": [a["statuses"] for a in answers if not a["ok"]][:3],
        "hits_p50": statistics.median(a["hits"] for a in ok) if ok else 0,
        **{key.removesuffix("_ms"): latency([a[key] for a in ok]) for key in keys},
    }
    log(
        f"asked {collection} {len(asked)} questions: search p50 {run['search'].get('p50_ms')} ms "
        f"(retrieval_s {run['retrieval'].get('p50_ms')} ms, the query's embedding alone "
        f"{run['query_embedding'].get('p50_ms')} ms), generation p50 "
        f"{run['generation'].get('p50_ms')} ms, plain chat p50 {run['plain_chat'].get('p50_ms')} "
        f"ms, {run['failed']} failed"
    )
    return run


async def measure(base: str, rag: RagConfig, args) -> dict:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    documents = docs()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        docs_runs = [
            await ingestion(session, base, f"docs-{n}", documents, rag)
            for n in range(1, args.docs_repeats + 1)
        ]
        per_copy = sum(len(chunk_texts(b, rag)) for b in batches(documents)) or 1
        count = -(-args.corpus_chunks // per_copy)  # copies of docs/, rounded up
        corpus = await ingestion(session, base, "corpus", copies(documents, count), rag)
        asked = questions(documents, args.questions)
        query_runs = [
            await queries(session, base, "docs-1", asked),
            await queries(session, base, "corpus", asked),
        ]
    return {"docs": docs_runs, "corpus": corpus | {"copies_of_docs": count}, "queries": query_runs}


def verdict(measured: dict) -> dict:
    """The docs/ run with the median rate, and whether everything went through."""
    runs = measured["docs"]
    median = statistics.median_low(run["chunks_per_s"] for run in runs)
    ingestions = [*runs, measured["corpus"]]
    clean = (
        all(run["failed"] == 0 and run["embeddings_alone"]["failed"] == 0 for run in ingestions)
        and all(run["chunks"] == run["chunks_expected"] for run in ingestions)
        and all(run["failed"] == 0 for run in measured["queries"])
    )
    return {
        "docs_median": next(run for run in runs if run["chunks_per_s"] == median)["collection"],
        "met": {"completed_without_errors": clean},
    }


def start_gateway(stack: Path, workdir: Path, rag: RagConfig) -> tuple[FirstProcess, str]:
    """The standalone gateway under test: open, no limits, collections in the workdir."""
    config = standalone_gateway(
        stack, workdir, auth={"required": False}, rag={"path": str(rag.path)}
    )
    return start_standalone_gateway(config, workdir / "federation-rag.yaml", "rag", timeout_s=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/rag.json")
    parser.add_argument(
        "--quick", action="store_true", help="docs/ once, a 500-chunk corpus, 10 questions."
    )
    parser.add_argument("--docs-repeats", type=int, default=None)
    parser.add_argument("--corpus-chunks", type=int, default=None)
    parser.add_argument("--questions", type=int, default=None)
    args = parser.parse_args()
    args.docs_repeats = args.docs_repeats or (QUICK_DOCS_REPEATS if args.quick else DOCS_REPEATS)
    args.corpus_chunks = args.corpus_chunks or (
        QUICK_CORPUS_CHUNKS if args.quick else CORPUS_CHUNKS
    )
    args.questions = args.questions or (QUICK_QUESTIONS if args.quick else QUESTIONS)
    workdir = Path(tempfile.mkdtemp(prefix="first-bench-rag-"))
    ray_temp = tempfile.mkdtemp(prefix="first-bench-", dir="/tmp")
    rag = RagConfig(path=workdir / "rag")
    stack = sites_stack(workdir, ray_temp, [site(name) for name in SITES])
    log(f"starting two simulated sites, workdir {workdir}")
    with running_stack(stack, workdir, ray_temp, 600):
        gateway, url = start_gateway(stack, workdir, rag)
        try:
            hello = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            wait_until_answering(Target(f"{url}{CHAT}", hello), 120, "the gateway")
            measured = asyncio.run(measure(url, rag, args))
        finally:
            gateway.stop()
    result = {
        "what": "RAG ingestion and questions through a standalone gateway, two simulated sites",
        "quick": args.quick,
        "sites": {
            "names": list(SITES),
            "embedding_model": {
                "id": EMBED,
                "ttft_ms": EMBED_TTFT_MS,
                "embedding_dim": EMBEDDING_DIM,
                "max_num_seqs": MAX_NUM_SEQS,
            },
            "chat_model": {"id": CHAT_MODEL, "ttft_ms": CHAT_TTFT_MS, "tpot_ms": CHAT_TPOT_MS},
        },
        "gateway": {
            "standalone": True,
            "limits": None,
            "rag": rag.model_dump(mode="json", include={"chunk_chars", "overlap_chars", "top_k"}),
            "embedding_inputs_per_request": BulkConfig().embedding_inputs_per_request,
        },
        "ingestion": {"documents_per_request": DOCUMENTS_PER_REQUEST, "sequential": True},
        "request": {"stream": False, "max_tokens": MAX_TOKENS},
        "target": "recorded",
        **measured,
        **verdict(measured),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
