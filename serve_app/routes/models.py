"""GET /v1/models and /v1/models/{id}: the union of the sites' models, with where each runs."""

# No `from __future__ import annotations`: FastAPI must see the Annotated
# dependencies built inside the router factories.
from typing import Annotated

from fastapi import APIRouter, Depends

from serve_app.errors import documented_errors
from serve_app.protocol import ModelCard, ModelList
from serve_app.routes.dependencies import (
    PINNED_PREFIX,
    CallerDep,
    FederationDep,
    any_site,
    pinned_site,
)


def build_models_router(pinned: bool) -> APIRouter:
    router = APIRouter(prefix=PINNED_PREFIX if pinned else "", tags=["models"])
    site_of = pinned_site if pinned else any_site

    @router.get(
        "/v1/models", response_model=ModelList, responses=documented_errors(401, 403, 404, 500, 503)
    )
    async def list_models(
        federation: FederationDep, caller: CallerDep, site: Annotated[str | None, Depends(site_of)]
    ) -> ModelList:
        """Every model some site serves and the caller may use, with each site's state for it."""
        return federation.models(caller, site)

    @router.get(
        "/v1/models/{model_id:path}",
        response_model=ModelCard,
        responses=documented_errors(401, 403, 404, 500, 503),
    )
    async def retrieve_model(
        model_id: str,
        federation: FederationDep,
        caller: CallerDep,
        site: Annotated[str | None, Depends(site_of)],
    ) -> ModelCard:
        """One model and the sites that serve it; 404 if no site does (or the caller may not)."""
        return federation.model(caller, model_id, site)

    return router
