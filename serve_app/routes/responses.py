"""OpenAI's Responses API: create (streamed or not), retrieve, delete, list input items."""

# No `from __future__ import annotations`: FastAPI must see the Annotated
# dependencies built inside the router factory.
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from openai.types.responses import Response as ResponseObject
from starlette.responses import Response

from serve_app.errors import documented_errors
from serve_app.routes.dependencies import (
    PINNED_PREFIX,
    CallerDep,
    ResponsesDep,
    ServicesDep,
    any_site,
    pinned_site,
)
from serve_app.routes.inference import documented_answers
from serve_app.translation.responses import ROUTE, ResponseCreateRequest
from serve_app.translation.service import InputItemsPage
from serve_app.workflows.calls import Calls

STORED_ERRORS = documented_errors(400, 401, 403, 404, 500)


def build_responses_router(pinned: bool) -> APIRouter:
    """`POST /v1/responses`, at /v1 or pinned to one site; the stored ones at /v1 only."""
    router = APIRouter(prefix=PINNED_PREFIX if pinned else "", tags=["responses"])
    site_of = pinned_site if pinned else any_site

    @router.post(
        "/v1/responses",
        response_model=None,
        responses=documented_answers(ResponseObject, True, "The response, or its events."),
    )
    async def create_response(
        body: ResponseCreateRequest,
        request: Request,
        services: ServicesDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> Response:
        """A response from the least-loaded site serving the model, on its chat completions;
        kept (`store`, default true) so that `previous_response_id` continues it anywhere."""
        calls = Calls(services.inference, request, caller, site, route=ROUTE)
        return await services.responses.create(calls, body)

    if pinned:
        return router

    @router.get("/v1/responses/{response_id}", responses=STORED_ERRORS)
    async def retrieve_response(
        response_id: str, responses: ResponsesDep, caller: CallerDep
    ) -> dict:
        """A stored response of the caller's (another user's is not found)."""
        return await responses.retrieve(caller, response_id)

    @router.delete("/v1/responses/{response_id}", responses=STORED_ERRORS)
    async def delete_response(response_id: str, responses: ResponsesDep, caller: CallerDep) -> dict:
        return await responses.delete(caller, response_id)

    @router.get("/v1/responses/{response_id}/input_items", responses=STORED_ERRORS)
    async def list_input_items(  # noqa: PLR0913 (the route's query parameters, spelled out)
        response_id: str,
        responses: ResponsesDep,
        caller: CallerDep,
        after: Annotated[str | None, Query(description="List the items after this id.")] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    ) -> dict:
        """The input items of a stored response, newest first unless `order=asc`."""
        page = InputItemsPage(after=after, limit=limit, order=order)
        return await responses.input_items(caller, response_id, page)

    return router
