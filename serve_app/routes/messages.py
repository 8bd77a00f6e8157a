"""Anthropic's Messages API: `POST /v1/messages` (streamed or not) and count_tokens.

Errors on these routes are Anthropic's envelope (serve_app/middleware.py
`AnthropicErrorMiddleware`); Anthropic's clients send their key as
`x-api-key`, which the gateway takes beside `Authorization: Bearer`.
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated
# dependencies built inside the router factory.
from typing import Annotated

from anthropic.types import Message, MessageTokensCount
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from serve_app.routes.dependencies import (
    PINNED_PREFIX,
    CallerDep,
    InferenceDep,
    any_site,
    pinned_site,
)
from serve_app.routes.inference import documented_answers
from serve_app.translation import service
from serve_app.translation.messages import (
    COUNT_TOKENS_ROUTE,
    ROUTE,
    CountTokensRequest,
    MessagesRequest,
)
from serve_app.workflows.calls import Calls

# The paths whose errors are Anthropic's, pinned or not.
ANTHROPIC_PATHS = r"^(/sites/[^/]+)?/v1/messages(/|$)"


def build_messages_router(pinned: bool) -> APIRouter:
    router = APIRouter(prefix=PINNED_PREFIX if pinned else "", tags=["messages"])
    site_of = pinned_site if pinned else any_site

    @router.post(
        "/v1/messages",
        response_model=None,
        responses=documented_answers(Message, True, "The message, or its events."),
    )
    async def create_message(
        body: MessagesRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response:
        """A message from the least-loaded site serving the model, on its chat completions."""
        return await service.create_message(Calls(inference, request, caller, site, ROUTE), body)

    @router.post(
        "/v1/messages/count_tokens",
        response_model=None,
        responses=documented_answers(MessageTokensCount, False, "The prompt's tokens."),
    )
    async def count_message_tokens(
        body: CountTokensRequest,
        request: Request,
        inference: InferenceDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response:
        """The prompt's tokens as the model counts them (a one-token completion at a site)."""
        calls = Calls(inference, request, caller, site, COUNT_TOKENS_ROUTE)
        return await service.count_tokens(calls, body)

    return router
