"""The RAG routes' wire models (`/v1/rag/...`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.protocol import ChatCompletionRequest


class RagDocument(BaseModel):
    id: str = Field(
        min_length=1,
        max_length=512,
        description="The document's id in the collection, e.g. its path; ingesting a document "
        "with the same id replaces it.",
    )
    title: str | None = Field(None, max_length=512, description="Shown when it is cited.")
    text: str = Field(min_length=1, description="Markdown or plain text.")


class IngestRequest(BaseModel):
    documents: list[RagDocument] = Field(min_length=1, max_length=1000)
    embedding_model: str | None = Field(
        None,
        description="For a new collection: the model that embeds it (default "
        "rag.embedding_model); an existing collection keeps its own.",
    )


class IngestResult(BaseModel):
    object: Literal["rag.ingest"] = "rag.ingest"
    collection: str
    documents: int = Field(description="Documents in the request.")
    changed: int = Field(description="Documents new or changed: chunked and embedded again.")
    unchanged: int = Field(description="Documents already there with the same text: skipped.")
    chunks_added: int
    chunks: int = Field(description="Chunks in the collection now.")


class RagCollection(BaseModel):
    id: str
    object: Literal["rag.collection"] = "rag.collection"
    embedding_model: str
    documents: int
    chunks: int
    created: int


class RagCollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RagCollection]


class RagCollectionDeleted(BaseModel):
    id: str
    object: Literal["rag.collection.deleted"] = "rag.collection.deleted"
    deleted: bool


class RagSource(BaseModel):
    """A chunk found for a question."""

    index: int = Field(description="Its number in the prompt: cited as [index].")
    id: str = Field(description="The chunk: `document#n`.")
    document: str
    title: str
    score: float = Field(description="Its fused (reciprocal rank) score; higher is better.")
    text: str


class SearchRequest(BaseModel):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=50, description="Default rag.top_k.")


class SearchResult(BaseModel):
    object: Literal["list"] = "list"
    data: list[RagSource]
    retrieval_s: float = Field(description="Embedding the query and searching, in seconds.")


class RagChatRequest(ChatCompletionRequest):
    first_sources: int | None = Field(
        None,
        ge=1,
        le=50,
        exclude=True,
        description="Chunks to answer from (default rag.top_k); the answer's `first_sources` "
        "lists them.",
    )
