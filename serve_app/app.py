"""The gateway's FastAPI app: routers, error handlers, middleware, and its lifespan.

The same app object runs under Ray Serve (serve_app/ingress.py) and
standalone under uvicorn (`first gateway up --standalone`). Its lifespan
builds the Gateway (control channels, status pollers, site clients) inside
whichever process serves it: a Serve replica or the uvicorn process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve_app.config import FederationConfig
from serve_app.control_channel import build_channels
from serve_app.errors import register_error_handlers
from serve_app.gateway import Gateway
from serve_app.middleware import RequestContextMiddleware
from serve_app.routes import health
from serve_app.routes.inference import build_inference_router
from serve_app.routes.models import build_models_router
from serve_app.settings import Settings

DESCRIPTION = """One OpenAI-compatible endpoint over many HPC sites.

Requests go to the least-loaded site that serves the model; `/sites/{site}/v1/...`
pins a request to one site. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`.
"""


def build_app(
    config: FederationConfig, settings: Settings | None = None, on_serve: bool = False
) -> FastAPI:
    """The gateway app; `on_serve` when Ray Serve's proxy fronts it (it sets request ids)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channels = build_channels(config, settings or Settings.from_environment())
        gateway = Gateway(config, channels)
        await gateway.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="FIRST gateway", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(health.router)
    for pinned in (False, True):
        app.include_router(build_models_router(pinned))
        app.include_router(build_inference_router(pinned))
    register_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.gateway.max_body_bytes,
        echo_request_id=not on_serve,
    )
    return app
