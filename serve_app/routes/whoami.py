"""GET /whoami: who the gateway takes the caller to be, and what they may use."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.access.policy import describe_caller
from serve_app.errors import documented_errors
from serve_app.protocol import WhoAmI
from serve_app.routes.dependencies import CallerDep, FederationDep

router = APIRouter(tags=["identity"])


@router.get("/whoami", response_model=WhoAmI, responses=documented_errors(401, 403, 500, 503))
async def whoami(federation: FederationDep, caller: CallerDep) -> WhoAmI:
    """The caller's identity, groups, the models they may use and their limits (models and
    tribunals by their own ids: an alias shares its model's access and limits)."""
    models = [card.id for card in federation.models(caller).data if card.alias_of is None]
    return describe_caller(caller, models, federation.config.limits)
