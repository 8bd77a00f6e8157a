"""The gateway as a Ray Serve deployment: the FastAPI app of serve_app/app.py, scaled by Serve.

The app is built inside each replica (`__serve_build_asgi_app__`), so the
config travels as plain data and every replica runs the app's lifespan:
its own control channels, status pollers and site connections.

Rate limits must hold across replicas, so they live in one more deployment,
`RateLimitService`, with a single replica that every ingress replica asks
through a `DeploymentHandle`. Serve deploys, restarts and removes it with the
gateway application. The hot-node keeper, when it runs inside the gateway,
is likewise one replica (`KeeperService`), in an application of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from deployments.serve_logging import quiet_terminal
from serve_app.access.ratelimit import NOTHING_HELD, Admission, LimitBook, Refusal, admitted
from serve_app.app import build_app
from serve_app.config import FederationConfig, LimitsConfig
from serve_app.metrics import serve_environment
from serve_app.services import build_keeper
from serve_app.settings import Settings

logger = logging.getLogger(__name__)
# The ingress only waits on sites; its concurrency is bounded by the sites, not by CPU.
MAX_ONGOING_REQUESTS = 1000
# Limits protect fairness, not security: if the limiter does not answer in this
# long, the request goes through rather than waiting on it.
LIMITER_TIMEOUT_S = 2.0


@serve.deployment(num_replicas=1, max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
class RateLimitService:
    """The one `LimitBook` of the whole gateway; its methods never await, so calls are atomic."""

    def __init__(self, limits: dict[str, Any]):
        self.book = LimitBook(LimitsConfig.model_validate(limits))

    def admit(self, user: str, model: str, tokens: int) -> Admission | Refusal:
        return self.book.admit(user, model, tokens, time.monotonic())

    def settle(self, user: str, model: str, admission: Admission, used: int) -> None:
        self.book.settle(user, model, admission, used, time.monotonic())


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class KeeperService:
    """The hot-node keeper on the gateway's Ray cluster: one replica, restarted by Serve."""

    async def __init__(self, config: dict[str, Any]):
        logging.getLogger("first.keeper").setLevel(logging.INFO)  # its decisions, in its log
        federation = FederationConfig.model_validate(config)
        self.keeper = build_keeper(federation, Settings.from_environment())
        self.keeper.start()

    async def __del__(self) -> None:
        await self.keeper.stop()


def build_keeper_app(config: FederationConfig) -> Application:
    return KeeperService.options(ray_actor_options=_actor_options(config, num_cpus=0)).bind(
        config.model_dump(mode="json")
    )


def _actor_options(config: FederationConfig, num_cpus: float) -> dict[str, Any]:
    """Serve's default options plus the metrics' environment (serve_app/metrics.py)."""
    return {"num_cpus": num_cpus, "runtime_env": {"env_vars": serve_environment(config)}}


class ServeRateLimiter:
    """The ingress replicas' side of `RateLimitService`."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def admit(self, user: str, model: str, tokens: int) -> Admission:
        try:
            answer = await asyncio.wait_for(
                self.handle.admit.remote(user, model, tokens), LIMITER_TIMEOUT_S
            )
        except Exception as exc:  # any failure (a timeout too) lets the request through
            logger.warning("rate limiter unavailable (%s); admitting", type(exc).__name__)
            return NOTHING_HELD  # its tokens are taken when it ends
        return admitted(answer)

    async def settle(self, user: str, model: str, admission: Admission, used: int) -> None:
        try:
            await asyncio.wait_for(
                self.handle.settle.remote(user, model, admission, used), LIMITER_TIMEOUT_S
            )
        except Exception as exc:  # a lost count must not fail the request
            logger.warning("rate limiter unavailable (%s); tokens not counted", type(exc).__name__)


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class FederatedIngress:
    def __init__(
        self,
        config: dict[str, Any],
        limiter: DeploymentHandle | None = None,
        cache_salt_secret: str | None = None,
    ):
        self._config = FederationConfig.model_validate(config)
        self._limiter = ServeRateLimiter(limiter) if limiter is not None else None
        # One secret for every replica, so a caller's salt is the same whichever answers.
        self._settings = replace(Settings.from_environment(), cache_salt_secret=cache_salt_secret)
        quiet_terminal()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self._config, self._settings, on_serve=True, limiter=self._limiter)


def build_gateway_app(config: FederationConfig) -> Application:
    """The Serve application of the gateway, autoscaled as the config says."""
    limiter = None
    if config.limits is not None:
        limiter = RateLimitService.bind(config.limits.model_dump(mode="json"))
    return FederatedIngress.options(
        autoscaling_config=config.gateway.autoscaling,
        # What `drain_on_serve` waits for: requests in flight, streams included.
        graceful_shutdown_timeout_s=config.gateway.shutdown_grace_s,
        ray_actor_options=_actor_options(config, num_cpus=1),
    ).bind(
        config.model_dump(mode="json"),
        limiter,
        Settings.from_environment().with_cache_salt_secret().cache_salt_secret,
    )
