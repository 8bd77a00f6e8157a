"""The gateway as a Ray Serve deployment: the FastAPI app of serve_app/app.py, scaled by Serve.

The app is built inside each replica (`__serve_build_asgi_app__`), so the
config travels as plain data and every replica runs the app's lifespan:
its own control channels, status pollers and site connections.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application

from serve_app.app import build_app
from serve_app.config import FederationConfig

# The ingress only waits on sites; its concurrency is bounded by the sites, not by CPU.
MAX_ONGOING_REQUESTS = 1000


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class FederatedIngress:
    def __init__(self, config: dict[str, Any]):
        self._config = FederationConfig.model_validate(config)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self._config, on_serve=True)


def build_gateway_app(config: FederationConfig) -> Application:
    """The Serve application of the gateway, autoscaled as the config says."""
    return FederatedIngress.options(
        autoscaling_config=config.gateway.autoscaling,
    ).bind(config.model_dump(mode="json"))
