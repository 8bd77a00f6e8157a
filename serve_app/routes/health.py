"""GET /health: the gateway is up, and what it knows about each site."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.errors import documented_errors
from serve_app.protocol import HealthReport
from serve_app.routes.dependencies import FederationDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthReport, responses=documented_errors(500))
async def health(federation: FederationDep) -> HealthReport:
    """200 while the gateway runs; `status` says whether all, some or no sites are up."""
    return federation.health()
