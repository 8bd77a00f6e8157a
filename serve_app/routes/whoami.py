"""GET /whoami: who the gateway takes the caller to be, and what they may use."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.errors import documented_errors
from serve_app.protocol import WhoAmI
from serve_app.routes.dependencies import CallerDep, GatewayDep

router = APIRouter(tags=["identity"])


@router.get("/whoami", response_model=WhoAmI, responses=documented_errors(401, 403, 500, 503))
async def whoami(gateway: GatewayDep, caller: CallerDep) -> WhoAmI:
    """The caller's identity, groups, the models they may use and their limits."""
    return gateway.describe(caller)
