"""Retrieval-augmented chat: ingest documents into collections, answer from them.

Both halves go through the gateway's request path (`workflows.calls.Calls`):
ingestion embeds the chunks with `/v1/embeddings`, in slices placed on their
own so a large corpus uses every site that serves the embedding model, and
a question is embedded the same way, then searched (BM25 and vector,
fused: serve_app/workflows/rag/store.py). The best chunks, numbered, go into
a system message before the caller's messages, and the chat completion
(on a model or a tribunal) answers with them; the answer carries
`first_sources` (each chunk's number, id, document, title, score and text):
a streamed answer sends them first, in a chunk with no choices, so a page can
show them while the answer streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_app.config import RagConfig
from serve_app.errors import CollectionNotFoundError, InvalidRequestError
from serve_app.inference import EVENT_STREAM
from serve_app.protocol import ChatCompletionResponse, ChatMessage, EmbeddingRequest
from serve_app.workflows.bulk import embed
from serve_app.workflows.calls import Calls
from serve_app.workflows.rag.chunking import chunk_document
from serve_app.workflows.rag.protocol import (
    IngestRequest,
    IngestResult,
    RagChatRequest,
    RagCollection,
    RagSource,
    SearchResult,
)
from serve_app.workflows.rag.store import ChunkRow, Collection, CollectionStore
from serve_app.workflows.tribunal import chat_completion

# vLLM's: cut an input to the embedding model's context instead of refusing it.
TRUNCATE_TO_CONTEXT = {"truncate_prompt_tokens": -1}


class RagService:
    def __init__(self, config: RagConfig):
        self.config = config
        self.store = CollectionStore(config.path)
        self._writing: dict[str, asyncio.Lock] = {}

    async def collections(self) -> list[RagCollection]:
        names = await asyncio.to_thread(self.store.names)
        return [await self.collection(name) for name in names]

    async def collection(self, name: str) -> RagCollection:
        return _card(await self._existing(name))

    async def drop(self, name: str) -> bool:
        async with self._lock(name):
            if not await asyncio.to_thread(self.store.drop, name):
                raise _not_found(name)
        return True

    async def ingest(self, calls: Calls, name: str, request: IngestRequest) -> IngestResult:
        """Chunk and embed the documents that are new or changed; replace their chunks."""
        async with self._lock(name):
            existing = await asyncio.to_thread(self.store.get, name)
            model = self._embedding_model(existing, request.embedding_model)
            known = await asyncio.to_thread(self.store.hashes, name)
            latest = {document.id: document for document in request.documents}  # last wins
            changed = [
                document
                for document in latest.values()
                if known.get(document.id) != _content_hash(document.text)
            ]
            rows: list[ChunkRow] = []
            for document in changed:
                title = document.title or document.id
                chunks = chunk_document(
                    document.text, self.config.chunk_chars, self.config.overlap_chars
                )
                digest = _content_hash(document.text)
                rows += [
                    ChunkRow(
                        id=f"{document.id}#{n}",
                        document=document.id,
                        title=_title(title, chunk.heading),
                        text=chunk.indexed(),
                        doc_hash=digest,
                        vector=[],
                    )
                    for n, chunk in enumerate(chunks)
                ]
            if rows:
                vectors = await self._embed(calls, model, [row.text for row in rows])
                rows = [
                    ChunkRow(**{**row.__dict__, "vector": vector})
                    for row, vector in zip(rows, vectors, strict=True)
                ]
            ids = [document.id for document in changed]
            await asyncio.to_thread(self.store.replace, name, model, ids, rows)
            now = await asyncio.to_thread(self.store.get, name)
        return IngestResult(
            collection=name,
            documents=len(request.documents),
            changed=len(changed),
            unchanged=len(latest) - len(changed),
            chunks_added=len(rows),
            chunks=now.chunks if now else 0,
        )

    async def search(self, calls: Calls, name: str, query: str, top_k: int | None) -> SearchResult:
        started = time.monotonic()
        collection = await self._existing(name)
        (vector,) = await self._embed(calls, collection.embedding_model, [query])
        found = await asyncio.to_thread(
            self.store.search, name, query, vector, top_k or self.config.top_k
        )
        sources = [
            RagSource(
                index=n, id=f.id, document=f.document, title=f.title, score=f.score, text=f.text
            )
            for n, f in enumerate(found, start=1)
        ]
        return SearchResult(data=sources, retrieval_s=round(time.monotonic() - started, 6))

    async def chat(
        self, calls: Calls, name: str, body: RagChatRequest
    ) -> Response | ChatCompletionResponse:
        """The chat completion answered from the collection's best chunks for the last
        user message, with `first_sources`."""
        question = _last_user_text(body.messages)
        if not question:
            raise InvalidRequestError(
                "The last user message has no text to search for.", "messages"
            )
        found = await self.search(calls, name, question, body.first_sources)
        numbered = "\n\n".join(f"[{s.index}] {s.title}\n{s.text}" for s in found.data)
        system = ChatMessage(role="system", content=self.config.prompt.format(sources=numbered))
        asked = body.model_copy(update={"messages": [system, *body.messages]})
        sources = [source.model_dump() for source in found.data]
        answer = await chat_completion(calls, asked)
        if isinstance(answer, ChatCompletionResponse):  # a tribunal's
            return JSONResponse({**answer.model_dump(mode="json"), "first_sources": sources})
        if isinstance(answer, StreamingResponse):
            return StreamingResponse(
                _sources_first(answer, sources, body.model), media_type=EVENT_STREAM
            )
        if answer.status_code != 200:
            return answer
        content = json.loads(answer.body)
        return JSONResponse({**content, "first_sources": sources}, headers=_passed(answer))

    # -- helpers ------------------------------------------------------------

    async def _existing(self, name: str) -> Collection:
        collection = await asyncio.to_thread(self.store.get, name)
        if collection is None:
            raise _not_found(name)
        return collection

    def _embedding_model(self, existing: Collection | None, asked: str | None) -> str:
        if existing is not None:
            if asked is not None and asked != existing.embedding_model:
                raise InvalidRequestError(
                    f"The collection {existing.name!r} is embedded by "
                    f"{existing.embedding_model!r}, not {asked!r}; drop it to change models.",
                    param="embedding_model",
                )
            return existing.embedding_model
        model = asked or self.config.embedding_model
        if model is None:
            raise InvalidRequestError(
                "A new collection needs an embedding model: set `embedding_model` (the gateway "
                "has no rag.embedding_model).",
                param="embedding_model",
            )
        return model

    async def _embed(self, calls: Calls, model: str, texts: list[str]) -> list[list[float]]:
        body = EmbeddingRequest(model=model, input=texts, **TRUNCATE_TO_CONTEXT)
        data, _, _ = await embed(calls, body, texts)
        return [item["embedding"] for item in data]

    def _lock(self, name: str) -> asyncio.Lock:
        return self._writing.setdefault(name, asyncio.Lock())


async def _sources_first(
    answer: StreamingResponse, sources: list[dict], model: str
) -> AsyncIterator[bytes]:
    """The sources as a first chunk without choices, then the answer's stream."""
    chunk = {
        "id": "chatcmpl-rag-sources",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "first_sources": sources,
    }
    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    body = answer.body_iterator
    try:
        async for part in body:
            yield part.encode() if isinstance(part, str) else part
    finally:
        await body.aclose()  # type: ignore[attr-defined]


def _passed(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("x-")}


def _card(collection: Collection) -> RagCollection:
    return RagCollection(
        id=collection.name,
        embedding_model=collection.embedding_model,
        documents=collection.documents,
        chunks=collection.chunks,
        created=collection.created,
    )


def _not_found(name: str) -> CollectionNotFoundError:
    return CollectionNotFoundError(
        f"The collection {name!r} does not exist (GET /v1/rag/collections lists them).",
        param="collection",
    )


def _title(document: str, heading: str) -> str:
    """A chunk's title: its heading path, under the document's title unless the path
    starts with it (a Markdown file's first heading is usually its title)."""
    if not heading or heading == document or heading.startswith(f"{document} > "):
        return heading or document
    return f"{document} > {heading}"


def _content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _last_user_text(messages: list[ChatMessage]) -> str:
    user = next((m for m in reversed(messages) if m.role == "user"), None)
    return user.text().strip() if user else ""
