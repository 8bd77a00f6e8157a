"""The gateway's FastAPI app: routers, error handlers, middleware, and its lifespan.

The same app object runs under Ray Serve (serve_app/ingress.py) and
standalone under uvicorn (`first gateway up --standalone`). Its lifespan
builds the services (serve_app/services.py) inside whichever process serves
it: a Serve replica or the uvicorn process.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve_app.access.ratelimit import RateLimiter
from serve_app.config import FederationConfig
from serve_app.errors import register_error_handlers
from serve_app.middleware import AnthropicErrorMiddleware, RequestContextMiddleware
from serve_app.routes import batches, health, metrics, rag, usage, web, whoami
from serve_app.routes.dependencies import credential_before_body
from serve_app.routes.inference import build_inference_router
from serve_app.routes.messages import ANTHROPIC_PATHS, build_messages_router
from serve_app.routes.models import build_models_router
from serve_app.routes.responses import build_responses_router
from serve_app.services import build_services
from serve_app.settings import Settings

DESCRIPTION = """One OpenAI-compatible endpoint over many HPC sites.

Requests go to the least-loaded site that serves the model; `/sites/{site}/v1/...`
pins a request to one site. OpenAI's Responses API (`/v1/responses`) and Anthropic's
Messages API (`/v1/messages`) are served on the sites' chat completions. Errors are
OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, except on the
Messages routes: Anthropic's `{"type": "error", "error": {"type", "message"}}`.
"""


def build_app(
    config: FederationConfig,
    settings: Settings | None = None,
    on_serve: bool = False,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """The gateway app; `on_serve` when Ray Serve's proxy fronts it (it sets request ids).

    `limiter` holds the rate limits when several replicas must share them;
    by default this process keeps them itself.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # On Serve every replica runs this lifespan: there the keeper is one
        # deployment of its own (serve_app/ingress.py), not one per replica.
        with_keeper = config.keeper.in_gateway and not on_serve
        services = build_services(
            config, settings or Settings.from_environment(), limiter, with_keeper
        )
        app.state.services = services
        # What start-up made lives as long as the process: out of the collector's way, so
        # a full collection walks only what requests make (one over the imports and
        # config took 82 ms here, and every request in flight waited for it).
        gc.freeze()
        try:
            await services.federation.first_reports()  # ready once it knows its sites
            yield
        finally:
            await services.stop()

    app = FastAPI(title="FIRST gateway", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(whoami.router)
    app.include_router(batches.router)
    app.include_router(usage.router)
    app.include_router(rag.router)
    app.include_router(web.router)
    if config.metrics.enabled:
        app.include_router(metrics.router)
    for pinned in (False, True):
        app.include_router(build_models_router(pinned))
        app.include_router(build_inference_router(pinned))
        app.include_router(build_responses_router(pinned))
        app.include_router(build_messages_router(pinned))
    register_error_handlers(app, invalid_request=credential_before_body)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.gateway.max_body_bytes,
        echo_request_id=not on_serve,
        # Multipart adds a little around the file itself.
        upload_limits={"/v1/files": config.batch.max_file_bytes + 1024 * 1024},
    )
    # Outermost: whichever layer refused a Messages request, the client reads Anthropic's.
    app.add_middleware(AnthropicErrorMiddleware, paths=ANTHROPIC_PATHS)
    return app
