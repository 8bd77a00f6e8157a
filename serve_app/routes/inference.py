"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: validated, then forwarded."""

# No `from __future__ import annotations`: FastAPI must see the Annotated
# dependencies built inside the router factories.
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import Response

from serve_app.errors import documented_errors
from serve_app.protocol import (
    BulkChatCompletionRequest,
    BulkChatCompletionResponse,
    BulkCompletionResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    OpenAIModel,
)
from serve_app.routes.dependencies import (
    PINNED_PREFIX,
    CallerDep,
    InferenceDep,
    any_site,
    pinned_site,
)
from serve_app.workflows.bulk import bulk_chat_completion, bulk_completion, bulk_embedding
from serve_app.workflows.calls import Calls
from serve_app.workflows.tribunal import chat_completion

STREAM_DOC = {"text/event-stream": {"schema": {"type": "string"}}}


def documented_answers(model: type[BaseModel], streams: bool, description: str) -> dict:
    """OpenAPI `responses` of an inference route: its answer (or event stream), its errors."""
    ok: dict = {"model": model, "description": description}
    if streams:
        ok["content"] = STREAM_DOC
    return {200: ok, **documented_errors()}


def _responses(model: type[OpenAIModel], streams: bool) -> dict:
    return documented_answers(model, streams, "The site's answer, passed through.")


def build_inference_router(pinned: bool) -> APIRouter:
    """The inference routes, at /v1 or pinned to one site at /sites/{site}/v1."""
    router = APIRouter(prefix=PINNED_PREFIX if pinned else "", tags=["inference"])
    site_of = pinned_site if pinned else any_site

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        responses=_responses(ChatCompletionResponse, streams=True),
    )
    async def create_chat_completion(
        body: ChatCompletionRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response | ChatCompletionResponse:
        """Chat completion on the least-loaded site serving the model; streams with `stream`.
        On a tribunal (listed in /v1/models), its generate-critique-revise workflow."""
        return await chat_completion(Calls(inference, request, caller, site), body)

    @router.post(
        "/v1/chat/completions/batch",
        response_model=BulkChatCompletionResponse,
        responses=documented_errors(),
    )
    async def create_bulk_chat_completion(
        body: BulkChatCompletionRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> BulkChatCompletionResponse:
        """Many conversations in one request (vLLM's shape): each placed on its own, one
        choice per conversation at its index; a failed one gets an `error`."""
        return await bulk_chat_completion(Calls(inference, request, caller, site), body)

    @router.post(
        "/v1/completions",
        response_model=None,
        responses=_responses(CompletionResponse, streams=True),
    )
    async def create_completion(
        body: CompletionRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response | BulkCompletionResponse:
        """Text completion on the least-loaded site serving the model; the prompts of a list
        `prompt` each placed on their own (not when streamed), their choices in order."""
        if (prompts := body.prompts()) is not None:
            calls = Calls(inference, request, caller, site)
            return await bulk_completion(calls, body, prompts)
        return await inference.forward(request, "/v1/completions", body, caller, site)

    @router.post(
        "/v1/embeddings",
        response_model=None,
        responses=_responses(EmbeddingResponse, streams=False),
    )
    async def create_embedding(
        body: EmbeddingRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response:
        """Embeddings from a site that serves the model as an embedding model; a long list
        `input` in slices, each placed on its own."""
        inputs = body.inputs()
        if inputs is not None and len(inputs) > inference.config.bulk.embedding_inputs_per_request:
            calls = Calls(inference, request, caller, site)
            return await bulk_embedding(calls, body, inputs)
        return await inference.forward(request, "/v1/embeddings", body, caller, site)

    return router
