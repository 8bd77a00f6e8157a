"""GET /v1/usage: requests and tokens per user, model, site, route or day (admins only)."""

# No `from __future__ import annotations`: FastAPI must see the Annotated query model.
import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from serve_app.errors import InvalidRequestError, documented_errors
from serve_app.routes.dependencies import CallerDep, ServicesDep
from serve_app.store import UsageGrouping
from serve_app.usage.report import PeriodError, UsageReport, usage_report

router = APIRouter(tags=["usage"])


class UsageQuery(BaseModel):
    since: str = Field("7d", description="A span back from now (30m, 24h, 7d) or an ISO date.")
    until: str | None = Field(None, description="Same forms; default: now.")
    by: UsageGrouping = "user"


@router.get(
    "/v1/usage", response_model=UsageReport, responses=documented_errors(400, 401, 403, 500, 503)
)
async def read_usage(
    services: ServicesDep,
    caller: CallerDep,
    query: Annotated[UsageQuery, Query()],
) -> UsageReport:
    """Usage from the ledger over a period, most tokens first (`policy.admin_groups` only)."""
    services.federation.policy.require_admin(caller)
    try:
        return await asyncio.to_thread(
            usage_report, services.store, query.since, query.until, query.by, time.time()
        )
    except PeriodError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None
