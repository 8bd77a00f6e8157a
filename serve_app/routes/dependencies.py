"""What routes receive through FastAPI's dependency injection.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread,
two thread hops per request for a lookup of nanoseconds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from serve_app.gateway import Gateway


async def gateway_of(request: Request) -> Gateway:
    """The replica's Gateway, built by the app's lifespan."""
    return request.app.state.gateway


async def pinned_site(
    site: str = Path(description="Send the request to this site only (see GET /health)."),
) -> str:
    return site


async def any_site() -> None:
    return None


PINNED_PREFIX = "/sites/{site}"


GatewayDep = Annotated[Gateway, Depends(gateway_of)]
