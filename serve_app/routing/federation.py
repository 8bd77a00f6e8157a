"""The gateway service: the sites, their pollers, placement and forwarding, in one object.

Routes call this and nothing else. One instance lives in each ingress replica
(built by the app's lifespan), so every replica keeps its own view of the
sites and its own in-flight counts. What must be shared between replicas
(rate limits, the usage ledger) comes in through the limiter and the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from serve_app.access.policy import Policy, Principal
from serve_app.access.ratelimit import RateLimiter
from serve_app.config import FederationConfig
from serve_app.errors import (
    GatewayError,
    ModelNotFoundError,
    NoSiteAvailableError,
    SiteNotFoundError,
)
from serve_app.metrics import GatewayMetrics
from serve_app.protocol import (
    CallerLimits,
    HealthReport,
    ModelCard,
    ModelList,
    ModelPlacement,
    OpenAIModel,
    ScrapeTargetGroup,
    SiteHealthReport,
    StreamOptions,
    WhoAmI,
)
from serve_app.routing.cold_start import ColdStarter
from serve_app.routing.control_channel import ControlChannel
from serve_app.routing.forwarding import Forwarder
from serve_app.routing.placement import Placer
from serve_app.routing.prefix_affinity import PrefixMemory, prefix_blocks
from serve_app.routing.site_state import SiteState, StatusPoller
from serve_app.store import UsageRecord
from serve_app.usage.ledger import UsageLedger
from serve_app.usage.metering import Meter

T = TypeVar("T")


class Gateway:
    def __init__(
        self,
        config: FederationConfig,
        channels: dict[str, ControlChannel],
        limiter: RateLimiter,
        ledger: UsageLedger | None,
    ):
        self.config = config
        self.policy = Policy(config.policy)
        self.limiter = limiter
        self.ledger = ledger
        self._background: set[asyncio.Task] = set()
        self.metrics = GatewayMetrics.from_config(config)
        self.sites = {site.name: SiteState(site, config, self.metrics) for site in config.sites}
        pollers = {name: StatusPoller(state, channels[name]) for name, state in self.sites.items()}
        self.pollers = list(pollers.values())
        self.cold_starter = ColdStarter(config.cold_start, channels, pollers, self.metrics)
        placement = config.placement
        self.placer = Placer(
            placement.policy,
            placement.latency_tolerance,
            memory=PrefixMemory(placement.prefix.memory_blocks),
            load_bound=placement.prefix.load_bound,
        )
        self.forwarder = Forwarder(self.sites, placement.retry_after_s, self.metrics)
        self.started_at = int(time.time())

    async def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    async def stop(self) -> None:
        await asyncio.gather(*(poller.stop() for poller in self.pollers))
        await self.forwarder.close()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)

    # -- models -------------------------------------------------------------

    def _sites_for(self, site: str | None) -> list[SiteState]:
        if site is None:
            return list(self.sites.values())
        if site not in self.sites:
            raise SiteNotFoundError(
                f"The site {site!r} does not exist. Sites: {', '.join(sorted(self.sites))}."
            )
        return [self.sites[site]]

    def models(self, caller: Principal, site: str | None = None) -> ModelList:
        """The models `caller` may use; models restricted to other groups are not shown."""
        now = time.monotonic()
        placements: dict[str, list[ModelPlacement]] = {}
        for state in self._sites_for(site):
            health = state.health(now)
            for model in sorted(state.models):
                if not self.policy.may_use(caller, model):
                    continue
                status = state.model_status(model) if health in ("up", "stale") else None
                placements.setdefault(model, []).append(
                    ModelPlacement(
                        site=state.name,
                        site_health=health,
                        state=status.state if status else "unknown",
                        ready=bool(status and status.ready),
                        jobs=len(status.active_jobs()) if state.slurm and status else None,
                    )
                )
        cards = [
            ModelCard(id=model, created=self.started_at, sites=sites)
            for model, sites in sorted(placements.items())
        ]
        return ModelList(data=cards)

    def model(self, caller: Principal, model_id: str, site: str | None = None) -> ModelCard:
        for card in self.models(caller, site).data:
            if card.id == model_id:
                return card
        raise self.unknown_model(caller, model_id, site)

    def unknown_model(self, caller: Principal, model: str, site: str | None) -> ModelNotFoundError:
        served = {m for state in self._sites_for(site) for m in state.models}
        known = sorted(m for m in served if self.policy.may_use(caller, m))
        where = f" on site {site!r}" if site else ""
        return ModelNotFoundError(
            f"The model {model!r} does not exist{where}. Available models: {', '.join(known)}.",
            param="model",
        )

    def describe(self, caller: Principal) -> WhoAmI:
        models = [card.id for card in self.models(caller).data]
        limits = self.config.limits
        return WhoAmI(
            user=caller.user,
            credential=caller.credential,
            identity_id=caller.identity_id,
            name=caller.name,
            email=caller.email,
            identity_provider=caller.identity_provider,
            key_id=caller.key_id,
            groups=sorted(caller.groups),
            models=models,
            limits=None
            if limits is None
            else CallerLimits(
                **limits.for_user(caller.user).model_dump(),
                model_tokens_per_min={m: limits.for_model(m) for m in models},
            ),
        )

    # -- requests -----------------------------------------------------------

    def placement_order(
        self,
        caller: Principal,
        model: str,
        site: str | None = None,
        prefix: list[bytes] | None = None,
    ) -> list[str]:
        """Sites to try for `model`, best first; 404 if none serves it, 503 if none can now."""
        states = [s for s in self._sites_for(site) if model in s.models]
        if not states:
            raise self.unknown_model(caller, model, site)
        now = time.monotonic()
        candidates = [c for s in states if (c := s.candidate(model, now)) is not None]
        if not candidates:
            reasons = ", ".join(f"{s.name} is {_why_not(s, model, now)}" for s in states)
            raise NoSiteAvailableError(
                f"No site can serve the model {model!r} right now ({reasons}). Retry later.",
                retry_after_s=self.config.placement.retry_after_s,
            )
        ordered = self.placer.order(candidates, prefix)
        return [c.site for c in ordered[: self.config.placement.max_attempts]]

    async def place(
        self, caller: Principal, model: str, site: str | None, prefix: list[bytes] | None = None
    ) -> list[str]:
        """Sites to try; when none runs the model but a Slurm site can start it, start it."""
        try:
            return self.placement_order(caller, model, site, prefix)
        except NoSiteAvailableError:
            now = time.monotonic()
            startable = [s for s in self._sites_for(site) if s.can_launch(model, now)]
            if not startable:
                raise
        await self.cold_starter.bring_up(model, startable)
        return self.placement_order(caller, model, site, prefix)

    async def forward(
        self,
        request: Request,
        path: str,
        body: OpenAIModel,
        caller: Principal,
        site: str | None = None,
    ) -> Response:
        """Check the caller may, pick sites, forward; every outcome goes to the ledger."""
        model = body.model
        request_id = request.scope.get("state", {}).get("request_id", "")
        payload, meter = self._prepare(body)
        meter.on_done = self._accountant(caller, path, request_id, body)
        try:
            self.policy.require_model(caller, model)
            await self.limiter.admit(caller.user, model)

            async def place_and_forward() -> Response:
                # A caller held through a cold start may leave; the hold ends with it.
                prefix = self._prefix(body)
                order = await self.place(caller, model, site, prefix)
                self.metrics.placed(model, order)
                response = await self.forwarder.forward(path, payload, request_id, order, meter)
                if prefix and meter.site is not None:
                    self.placer.remember(prefix, meter.site)
                return response

            response = await until_disconnected(request, place_and_forward())
        except GatewayError as exc:
            meter.finish(exc.status)
            raise
        except asyncio.CancelledError:
            meter.finish(499)
            raise
        except Exception:
            meter.finish(500)
            raise
        if response is None:
            # 499: nginx's "client closed request"; nobody is left to read it.
            meter.finish(499)
            return Response(status_code=499)
        return response

    def _prefix(self, body: OpenAIModel) -> list[bytes] | None:
        """The prompt's block hashes, when placement follows prefixes."""
        if self.config.placement.policy != "prefix-aware":
            return None
        settings = self.config.placement.prefix
        return prefix_blocks(_prompt_of(body), settings.block_chars, settings.max_blocks)

    def _prepare(self, body: OpenAIModel) -> tuple[bytes, Meter]:
        """The site's request body; streams always ask the site for usage, to meter them."""
        keep = self.config.ledger.store_content
        usage_requested = True
        if getattr(body, "stream", None):
            options = body.stream_options or StreamOptions()
            usage_requested = bool(options.include_usage)
            if not usage_requested:
                options = options.model_copy(update={"include_usage": True})
                body = body.model_copy(update={"stream_options": options})
        # Explicit nulls mean "default" in OpenAI's API; some servers choke on them.
        payload = body.model_dump_json(exclude_none=True).encode()
        return payload, Meter(body.model, usage_requested=usage_requested, keep_content=keep)

    def _accountant(self, caller: Principal, path: str, request_id: str, body: OpenAIModel):
        started_at, started = time.time(), time.monotonic()

        def account(meter: Meter) -> None:
            self.metrics.request_done(meter, path, started)
            if meter.total_tokens:
                task = asyncio.ensure_future(
                    self.limiter.record(caller.user, meter.model, meter.total_tokens)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            if self.ledger is None:
                return
            self.ledger.record(
                UsageRecord(
                    time=started_at,
                    request_id=request_id,
                    user=caller.user,
                    credential=caller.credential,
                    route=path,
                    model=meter.model[:256],
                    site=meter.site,
                    status=meter.status,
                    prompt_tokens=meter.prompt_tokens,
                    completion_tokens=meter.completion_tokens,
                    latency_s=round(time.monotonic() - started, 6),
                    prompt=_prompt_of(body) if meter.keep_content else None,
                    completion=meter.completion,
                )
            )

        return account

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

    def scrape_targets(self) -> list[ScrapeTargetGroup]:
        """Every non-colocated site's Ray nodes, as its last report named them.

        A site that stops answering keeps its last targets, so Prometheus sees
        them fail (`up` 0) instead of their vanishing. Colocated sites run on the
        gateway's own Ray cluster, which Prometheus finds through Ray's own file.
        """
        return [
            ScrapeTargetGroup(
                targets=sorted(set(state.status.metrics_targets)), labels={"site": state.name}
            )
            for state in self.sites.values()
            if state.status is not None and not state.config.colocated
        ]


def _prompt_of(body: OpenAIModel) -> str:
    for name in ("messages", "prompt", "input"):
        if (value := getattr(body, name, None)) is not None:
            return json.dumps(value, default=lambda v: v.model_dump(exclude_none=True))
    return ""


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
