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

from autoscaling.keeper import Keeper
from serve_app.access.auth import build_authenticator
from serve_app.access.ratelimit import LocalRateLimiter, NoRateLimiter, RateLimiter
from serve_app.batch.service import BatchService
from serve_app.batch.store import SqliteBatchStore
from serve_app.batch.supervisor import BatchSupervisor
from serve_app.config import FederationConfig
from serve_app.errors import register_error_handlers
from serve_app.metrics import forget_dead_processes, process_ended
from serve_app.middleware import RequestContextMiddleware
from serve_app.routes import batches, health, metrics, usage, whoami
from serve_app.routes.inference import build_inference_router
from serve_app.routes.models import build_models_router
from serve_app.routing.control_channel import build_channels
from serve_app.routing.federation import Gateway
from serve_app.settings import Settings
from serve_app.store import build_store
from serve_app.usage.ledger import UsageLedger

DESCRIPTION = """One OpenAI-compatible endpoint over many HPC sites.

Requests go to the least-loaded site that serves the model; `/sites/{site}/v1/...`
pins a request to one site. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`.
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
        environment = settings or Settings.from_environment()
        forget_dead_processes()
        channels = build_channels(config, environment)
        store = build_store(config.store)
        app.state.store = store
        ledger = UsageLedger(store, config.ledger) if config.ledger.enabled else None
        chosen = limiter or (LocalRateLimiter(config.limits) if config.limits else NoRateLimiter())
        gateway = Gateway(config, channels, chosen, ledger)
        app.state.authenticator = build_authenticator(
            config.auth, gateway.policy, store, environment
        )
        await gateway.start()
        app.state.gateway = gateway
        batch_store = SqliteBatchStore(config.store.path, config.store.files_path)
        app.state.batches = BatchService(batch_store, config.batch, gateway)
        supervisor = BatchSupervisor(app.state.batches, channels)
        supervisor.start()
        # On Serve every replica runs this lifespan: there the keeper is one
        # deployment of its own (serve_app/ingress.py), not one per replica.
        keeper = None
        if config.keeper.in_gateway and not on_serve and config.slurm_sites:
            keeper = Keeper(config, build_channels(config, environment))
            keeper.start()
        try:
            yield
        finally:
            if keeper is not None:
                await keeper.stop()
            await supervisor.stop()
            await gateway.stop()
            process_ended()

    app = FastAPI(title="FIRST gateway", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(whoami.router)
    app.include_router(batches.router)
    app.include_router(usage.router)
    if config.metrics.enabled:
        app.include_router(metrics.router)
    for pinned in (False, True):
        app.include_router(build_models_router(pinned))
        app.include_router(build_inference_router(pinned))
    register_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.gateway.max_body_bytes,
        echo_request_id=not on_serve,
        # Multipart adds a little around the file itself.
        upload_limits={"/v1/files": config.batch.max_file_bytes + 1024 * 1024},
    )
    return app
