"""RAG: collections of documents (`/v1/rag/collections`) and chat answered from one."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies.
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from serve_app.config.workflows import check_collection_name
from serve_app.errors import CollectionNotFoundError, documented_errors
from serve_app.protocol import ChatCompletionResponse
from serve_app.routes.dependencies import CallerDep, InferenceDep, RagDep
from serve_app.workflows.calls import Calls
from serve_app.workflows.rag.protocol import (
    IngestRequest,
    IngestResult,
    RagChatRequest,
    RagCollection,
    RagCollectionDeleted,
    RagCollectionList,
    SearchRequest,
    SearchResult,
)

router = APIRouter(tags=["rag"])
ERRORS = documented_errors(400, 401, 403, 404, 413, 429, 500, 503)


async def collection_of(
    collection: str = Path(description="The collection's name."),
) -> str:
    """The path's collection name; a name no collection can have is simply not found."""
    try:
        return check_collection_name(collection)
    except ValueError as exc:
        raise CollectionNotFoundError(str(exc), param="collection") from None


CollectionDep = Annotated[str, Depends(collection_of)]


@router.get("/v1/rag/collections", response_model=RagCollectionList, responses=ERRORS)
async def list_collections(rag: RagDep, caller: CallerDep) -> RagCollectionList:
    """Every collection, with its embedding model and size."""
    return RagCollectionList(data=await rag.collections())


@router.get("/v1/rag/collections/{collection}", response_model=RagCollection, responses=ERRORS)
async def get_collection(
    collection: CollectionDep, rag: RagDep, caller: CallerDep
) -> RagCollection:
    return await rag.collection(collection)


@router.delete(
    "/v1/rag/collections/{collection}", response_model=RagCollectionDeleted, responses=ERRORS
)
async def drop_collection(
    collection: CollectionDep, rag: RagDep, caller: CallerDep
) -> RagCollectionDeleted:
    """Drop the collection and every chunk in it."""
    return RagCollectionDeleted(id=collection, deleted=await rag.drop(collection))


@router.post(
    "/v1/rag/collections/{collection}/documents", response_model=IngestResult, responses=ERRORS
)
async def ingest_documents(  # noqa: PLR0913 (FastAPI dependencies)
    collection: CollectionDep,
    body: IngestRequest,
    request: Request,
    rag: RagDep,
    inference: InferenceDep,
    caller: CallerDep,
) -> IngestResult:
    """Add or replace documents: chunked, embedded through /v1/embeddings (spread over the
    sites), stored; a document ingested again unchanged is skipped. Makes the collection."""
    return await rag.ingest(Calls(inference, request, caller), collection, body)


@router.post(
    "/v1/rag/collections/{collection}/search", response_model=SearchResult, responses=ERRORS
)
async def search_collection(  # noqa: PLR0913 (FastAPI dependencies)
    collection: CollectionDep,
    body: SearchRequest,
    request: Request,
    rag: RagDep,
    inference: InferenceDep,
    caller: CallerDep,
) -> SearchResult:
    """The chunks that best match `query` (BM25 and vector search, fused)."""
    calls = Calls(inference, request, caller)
    return await rag.search(calls, collection, body.query, body.top_k)


@router.post(
    "/v1/rag/{collection}/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletionResponse,
            "description": "The chat completion, with `first_sources`; streamed, the sources "
            "come first, in a chunk with no choices.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **ERRORS,
    },
)
async def rag_chat_completion(  # noqa: PLR0913 (FastAPI dependencies)
    collection: CollectionDep,
    body: RagChatRequest,
    request: Request,
    rag: RagDep,
    inference: InferenceDep,
    caller: CallerDep,
) -> Response | ChatCompletionResponse:
    """A chat completion (on a model or a tribunal) answered from the collection's best
    chunks for the last user message, which it cites."""
    return await rag.chat(Calls(inference, request, caller), collection, body)
