"""GET /metrics and /metrics/targets: what Prometheus reads from the federation.

`/metrics` is the gateway's own metrics (serve_app/metrics.py);
`/metrics/targets` lists the other sites' Ray nodes for Prometheus's HTTP
service discovery (monitoring/prometheus.py). Like Ray's and vLLM's own
metrics endpoints they need no credential: they hold counts by model, site
and route and node addresses, never a user. Keep them off the public
network with the firewall in front of the federation.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from serve_app.metrics import exposition
from serve_app.protocol import ScrapeTargetGroup
from serve_app.routes.dependencies import FederationDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    content, content_type = exposition()
    return Response(content, media_type=content_type)


@router.get("/metrics/targets", include_in_schema=False)
async def scrape_targets(federation: FederationDep) -> list[ScrapeTargetGroup]:
    """Prometheus's HTTP service discovery (`http_sd_configs`): the sites' Ray nodes."""
    return federation.scrape_targets()
