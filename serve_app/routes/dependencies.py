"""What routes receive through FastAPI's dependency injection.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread,
two thread hops per request for a lookup of nanoseconds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from serve_app.access.auth import Authenticator
from serve_app.access.policy import Principal
from serve_app.batch.service import BatchService
from serve_app.routing.federation import Gateway


async def gateway_of(request: Request) -> Gateway:
    """The replica's Gateway, built by the app's lifespan."""
    return request.app.state.gateway


async def caller_of(request: Request) -> Principal:
    """Who is calling: 401/403/503 before any route runs if the credential does not do."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(request.headers.get("authorization"))


async def pinned_site(
    site: str = Path(description="Send the request to this site only (see GET /health)."),
) -> str:
    return site


async def any_site() -> None:
    return None


PINNED_PREFIX = "/sites/{site}"


GatewayDep = Annotated[Gateway, Depends(gateway_of)]
CallerDep = Annotated[Principal, Depends(caller_of)]


async def batches_of(request: Request) -> BatchService:
    """The replica's Files and Batches service, built by the app's lifespan."""
    return request.app.state.batches


BatchesDep = Annotated[BatchService, Depends(batches_of)]
