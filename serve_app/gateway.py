"""The gateway service: the sites, their pollers, placement and forwarding, in one object.

Routes call this and nothing else. One instance lives in each ingress replica
(built by the app's lifespan), so every replica keeps its own view of the
sites and its own in-flight counts; nothing is shared between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import FederationConfig
from serve_app.control_channel import ControlChannel
from serve_app.errors import ModelNotFoundError, NoSiteAvailableError, SiteNotFoundError
from serve_app.forwarding import Forwarder
from serve_app.placement import Placer
from serve_app.protocol import HealthReport, ModelCard, ModelList, ModelPlacement, SiteHealthReport
from serve_app.site_state import SiteState, StatusPoller

T = TypeVar("T")


class Gateway:
    def __init__(self, config: FederationConfig, channels: dict[str, ControlChannel]):
        self.config = config
        self.sites = {site.name: SiteState(site, config) for site in config.sites}
        self.pollers = [StatusPoller(state, channels[name]) for name, state in self.sites.items()]
        self.placer = Placer(config.placement.policy, config.placement.latency_tolerance)
        self.forwarder = Forwarder(self.sites, config.placement.retry_after_s)
        self.started_at = int(time.time())

    async def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    async def stop(self) -> None:
        await asyncio.gather(*(poller.stop() for poller in self.pollers))
        await self.forwarder.close()

    # -- models -------------------------------------------------------------

    def _sites_for(self, site: str | None) -> list[SiteState]:
        if site is None:
            return list(self.sites.values())
        if site not in self.sites:
            raise SiteNotFoundError(
                f"The site {site!r} does not exist. Sites: {', '.join(sorted(self.sites))}."
            )
        return [self.sites[site]]

    def models(self, site: str | None = None) -> ModelList:
        now = time.monotonic()
        placements: dict[str, list[ModelPlacement]] = {}
        for state in self._sites_for(site):
            health = state.health(now)
            for model in sorted(state.models):
                status = state.model_status(model) if health in ("up", "stale") else None
                placements.setdefault(model, []).append(
                    ModelPlacement(
                        site=state.name,
                        site_health=health,
                        state=status.state if status else "unknown",
                        ready=bool(status and status.ready),
                    )
                )
        cards = [
            ModelCard(id=model, created=self.started_at, sites=sites)
            for model, sites in sorted(placements.items())
        ]
        return ModelList(data=cards)

    def model(self, model_id: str, site: str | None = None) -> ModelCard:
        for card in self.models(site).data:
            if card.id == model_id:
                return card
        raise self._unknown_model(model_id, site)

    def _unknown_model(self, model: str, site: str | None) -> ModelNotFoundError:
        known = sorted({m for state in self._sites_for(site) for m in state.models})
        where = f" on site {site!r}" if site else ""
        return ModelNotFoundError(
            f"The model {model!r} does not exist{where}. Available models: {', '.join(known)}.",
            param="model",
        )

    # -- requests -----------------------------------------------------------

    def placement_order(self, model: str, site: str | None = None) -> list[str]:
        """Sites to try for `model`, best first; 404 if none serves it, 503 if none can now."""
        states = [s for s in self._sites_for(site) if model in s.models]
        if not states:
            raise self._unknown_model(model, site)
        now = time.monotonic()
        candidates = [c for s in states if (c := s.candidate(model, now)) is not None]
        if not candidates:
            reasons = ", ".join(f"{s.name} is {_why_not(s, model, now)}" for s in states)
            raise NoSiteAvailableError(
                f"No site can serve the model {model!r} right now ({reasons}). Retry later.",
                retry_after_s=self.config.placement.retry_after_s,
            )
        ordered = self.placer.order(candidates)
        return [c.site for c in ordered[: self.config.placement.max_attempts]]

    async def forward(
        self, request: Request, path: str, body: bytes, model: str, site: str | None = None
    ) -> Response:
        order = self.placement_order(model, site)
        request_id = request.scope.get("state", {}).get("request_id", "")
        response = await until_disconnected(
            request, self.forwarder.forward(path, body, model, request_id, order)
        )
        # 499: nginx's "client closed request"; nobody is left to read it.
        return response if response is not None else Response(status_code=499)

    # -- health -------------------------------------------------------------

    def health(self) -> HealthReport:
        now = time.monotonic()
        reports = [
            SiteHealthReport(
                name=state.name,
                health=state.health(now),
                circuit=state.breaker.state(now),
                in_flight=state.in_flight.total(),
                report_age_s=round(now - state.reported_at, 3) if state.reported_at else None,
                latency_s={model: round(s, 4) for model, s in sorted(state.latency_s.items())},
                error=state.error,
            )
            for state in self.sites.values()
        ]
        up = sum(r.health in ("up", "stale") for r in reports)
        status = "ok" if up == len(reports) else "degraded" if up else "no_sites"
        return HealthReport(status=status, sites=reports)


def _why_not(state: SiteState, model: str, now: float) -> str:
    health = state.health(now)
    if health == "down":
        return "down"
    if not state.breaker.available(now):
        return "failing requests (circuit open)"
    status = state.model_status(model)
    return f"reporting the model {status.state}" if status else health


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and answering None) if the client disconnects first.

    Under uvicorn a handler runs on after its client has gone; a generation
    the client no longer waits for must not keep a site busy. (Ray Serve
    cancels the handler itself; this is then a no-op.)
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            return None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
