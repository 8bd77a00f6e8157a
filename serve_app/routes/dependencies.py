"""What routes receive through FastAPI's dependency injection: the services, and the caller.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread,
two thread hops per request for a lookup of nanoseconds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse

from deployments.openai_errors import validation_error_handler
from serve_app.access.policy import Principal
from serve_app.batch.service import BatchService
from serve_app.errors import GatewayError, gateway_error_handler
from serve_app.inference import InferenceService
from serve_app.routing.federation import Federation
from serve_app.services import Services
from serve_app.translation.service import ResponsesService
from serve_app.workflows.rag.service import RagService


async def services_of(request: Request) -> Services:
    """The replica's services, built by the app's lifespan."""
    return Services.of(request)


ServicesDep = Annotated[Services, Depends(services_of)]


async def federation_of(services: ServicesDep) -> Federation:
    return services.federation


async def inference_of(services: ServicesDep) -> InferenceService:
    return services.inference


async def batches_of(services: ServicesDep) -> BatchService:
    return services.batches


async def rag_of(services: ServicesDep) -> RagService:
    return services.rag


async def responses_of(services: ServicesDep) -> ResponsesService:
    return services.responses


async def caller_of(services: ServicesDep, request: Request) -> Principal:
    """Who is calling: 401/403/503 before any route runs if the credential does not do.
    Anthropic's clients send their key as `x-api-key`, taken as a bearer token."""
    headers = request.headers
    authorization = headers.get("authorization")
    if authorization is None and (key := headers.get("x-api-key")):
        authorization = f"Bearer {key}"
    return await services.authenticator.authenticate(authorization)


async def credential_before_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A bad body on a route that needs a caller: the credential is checked first.

    FastAPI parses the body before it runs any dependency, so without this a
    caller with no valid credential would learn what its body lacks (400)
    before being told it may not call at all (401).
    """
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and _needs_caller(route.dependant):
        try:
            await caller_of(Services.of(request), request)
        except GatewayError as refused:
            return await gateway_error_handler(request, refused)
    return await validation_error_handler(request, exc)


def _needs_caller(dependant: Dependant) -> bool:
    return any(d.call is caller_of for d in get_flat_dependant(dependant).dependencies)


async def pinned_site(
    site: str = Path(description="Send the request to this site only (see GET /health)."),
) -> str:
    return site


async def any_site() -> None:
    return None


PINNED_PREFIX = "/sites/{site}"

FederationDep = Annotated[Federation, Depends(federation_of)]
InferenceDep = Annotated[InferenceService, Depends(inference_of)]
BatchesDep = Annotated[BatchService, Depends(batches_of)]
RagDep = Annotated[RagService, Depends(rag_of)]
ResponsesDep = Annotated[ResponsesService, Depends(responses_of)]
CallerDep = Annotated[Principal, Depends(caller_of)]
