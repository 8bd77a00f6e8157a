"""The services the routes use, built in one place and stopped in reverse.

Every process that serves the gateway's app (each Serve replica, or the
standalone gateway) builds its own `Services` in the app's lifespan: its own
site clients and status pollers, credential cache, ledger writer and batch
supervisor. What must be shared between replicas comes in from outside:
the rate limiter (one Serve deployment on Serve, serve_app/ingress.py) and
the store (one database file). Routes reach these through the typed
dependencies in serve_app/routes/dependencies.py, never through globals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from autoscaling.keeper import Decision, Keeper
from serve_app.access.auth import Authenticator, build_authenticator
from serve_app.access.cache_salt import CacheSalter
from serve_app.access.policy import Policy
from serve_app.access.ratelimit import LocalRateLimiter, NoRateLimiter, RateLimiter
from serve_app.batch.service import BatchService
from serve_app.batch.store import SqliteBatchStore
from serve_app.batch.supervisor import BatchSupervisor
from serve_app.config import FederationConfig
from serve_app.inference import InferenceService
from serve_app.metrics import (
    GatewayMetrics,
    forget_dead_processes,
    keeper_decision,
    process_ended,
)
from serve_app.routing.control_channel import build_site_clients
from serve_app.routing.federation import Federation
from serve_app.settings import Settings
from serve_app.store import SqliteStore, build_store
from serve_app.translation.service import ResponsesService
from serve_app.usage.ledger import UsageLedger
from serve_app.workflows.rag.service import RagService


@dataclass
class Services:
    config: FederationConfig
    metrics: GatewayMetrics
    store: SqliteStore
    authenticator: Authenticator
    federation: Federation
    inference: InferenceService
    batches: BatchService
    rag: RagService
    responses: ResponsesService
    supervisor: BatchSupervisor
    ledger: UsageLedger | None
    keeper: Keeper | None

    @staticmethod
    def of(connection: HTTPConnection) -> Services:
        """The services of the app serving `connection` (its lifespan built them)."""
        return connection.app.state.services

    async def stop(self) -> None:
        """Stop in the reverse order of `build_services`; the ledger writes what is queued."""
        if self.keeper is not None:
            await self.keeper.stop()
        await self.supervisor.stop()
        await self.inference.stop()
        await self.federation.stop()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)
        process_ended()


def build_services(
    config: FederationConfig,
    settings: Settings,
    limiter: RateLimiter | None = None,
    with_keeper: bool = False,
) -> Services:
    """Build and start every service; call it inside the event loop that will serve.

    `limiter` holds the rate limits when several replicas must share them; by
    default this process keeps them itself. `with_keeper` runs the hot-node
    keeper here (the standalone gateway; on Serve it is a deployment of its own).
    """
    forget_dead_processes()
    metrics = GatewayMetrics.from_config(config)
    policy = Policy(config.policy)
    store = build_store(config.store)
    ledger = UsageLedger(store, config.ledger) if config.ledger.enabled else None
    limiter = limiter or (LocalRateLimiter(config.limits) if config.limits else NoRateLimiter())
    federation = Federation(config, build_site_clients(config, settings), policy, metrics)
    secret = settings.with_cache_salt_secret().cache_salt_secret or ""
    salter = CacheSalter(config.cache_isolation, secret)
    inference = InferenceService(config, federation, limiter, ledger, salter)
    batches = BatchService(
        SqliteBatchStore(config.store.path, config.store.files_path), config.batch, federation
    )
    services = Services(
        config=config,
        metrics=metrics,
        store=store,
        authenticator=build_authenticator(config.auth, policy, store, settings),
        federation=federation,
        inference=inference,
        batches=batches,
        rag=RagService(config.rag),
        responses=ResponsesService(store, federation),
        supervisor=BatchSupervisor(batches, ledger),
        ledger=ledger,
        keeper=build_keeper(config, settings) if with_keeper and config.slurm_sites else None,
    )
    federation.start()
    services.supervisor.start()
    if services.keeper is not None:
        services.keeper.start()
    return services


def build_keeper(config: FederationConfig, settings: Settings) -> Keeper:
    """The hot-node keeper over the federation's Slurm sites, counting its decisions."""

    def count(site: str, decision: Decision) -> None:
        keeper_decision(site, decision.model, decision.action, decision.reason)

    clients = build_site_clients(config, settings, slurm_only=True)
    return Keeper(config.keeper, clients, config.cold_start.max_failed_starts, on_decision=count)
