"""What one gateway replica knows of its sites, and where a request for a model can go.

Per site: its state (serve_app/routing/site_state.py) kept current by a
status poller, through the site's typed client; the cold starter for models
that run nowhere yet; the placer. From that it answers the read side
(`/v1/models` with the tribunals and aliases, `/health`, Prometheus's targets) and the
questions of the request path: which model a name stands for (`resolve`), whether it
answers the route's API (`require_api`), which sites, best first (`placement_order`),
starting the model in a Slurm job when none runs it (`place_or_cold_start`). One instance
lives in each ingress replica, so every replica keeps its own view of the
sites and its own in-flight counts.
"""

from __future__ import annotations

import asyncio
import time

from deployments.capabilities import Api, CapabilitiesConfig
from deployments.site_client import SiteClient
from serve_app.access.policy import Policy, Principal
from serve_app.config import FederationConfig, TribunalConfig
from serve_app.errors import (
    ModelNotFoundError,
    NoSiteAvailableError,
    SiteNotFoundError,
    StreamingUnsupportedError,
    UnsupportedApiError,
)
from serve_app.metrics import GatewayMetrics
from serve_app.protocol import (
    HealthReport,
    ModelCard,
    ModelList,
    ModelPlacement,
    ScrapeTargetGroup,
    SiteHealthReport,
    TribunalMembers,
)
from serve_app.routing.cold_start import ColdStarter
from serve_app.routing.placement import Placer
from serve_app.routing.prefix_affinity import PrefixMemory
from serve_app.routing.site_state import SiteState, StatusPoller
from serve_app.routing.transports import build_transport

# The API of each caller's route that reaches a model: what `require_api` checks.
API_OF_ROUTE: dict[str, Api] = {
    "/v1/chat/completions": "chat",
    "/v1/chat/completions/batch": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages",
}
# A tribunal answers chat completions, text in and out, without tools.
TRIBUNAL_CAPABILITIES = CapabilitiesConfig(
    input_modalities=["text"], tool_calling=False, reasoning=False, apis=["chat"]
)


class Federation:
    def __init__(
        self,
        config: FederationConfig,
        clients: dict[str, SiteClient],
        policy: Policy,
        metrics: GatewayMetrics,
    ):
        self.config = config
        self.policy = policy
        self.metrics = metrics
        self.clients = clients
        self.sites = {site.name: SiteState(site, config, metrics) for site in config.sites}
        self.transports = {
            site.name: build_transport(site, clients[site.name]) for site in config.sites
        }
        self.pollers = {
            name: StatusPoller(state, clients[name], self.transports[name])
            for name, state in self.sites.items()
        }
        self.cold_starter = ColdStarter(config.cold_start, self.pollers, metrics)
        placement = config.placement
        self.placer = Placer(
            placement.policy,
            placement.latency_tolerance,
            memory=PrefixMemory(placement.prefix.memory_blocks),
            load_bound=placement.prefix.load_bound,
        )
        self.started_at = int(time.time())
        # Resolved once: deriving a context window may read the weights' config.json.
        self._capabilities = {
            site.name: {m.id: m.resolved_capabilities() for m in site.site_config.models}
            for site in config.sites
        }

    def start(self) -> None:
        for poller in self.pollers.values():
            poller.start()

    async def first_reports(self) -> None:
        """Wait until every site's first status call has come back, answered or failed
        (each within its status timeout). Until then the gateway knows no site's load or
        replicas: it would place blind, and a burst in the first seconds would all go to
        whichever site happened to answer first."""
        await asyncio.gather(*(poller.polled.wait() for poller in self.pollers.values()))

    async def stop(self) -> None:
        """Stop polling; close every site's client and transport."""
        await asyncio.gather(*(poller.stop() for poller in self.pollers.values()))
        await asyncio.gather(*(transport.close() for transport in self.transports.values()))

    # -- models -------------------------------------------------------------

    def _sites_for(self, site: str | None) -> list[SiteState]:
        if site is None:
            return list(self.sites.values())
        if site not in self.sites:
            raise SiteNotFoundError(
                f"The site {site!r} does not exist. Sites: {', '.join(sorted(self.sites))}."
            )
        return [self.sites[site]]

    def serves(self, model: str, site: str | None = None) -> bool:
        """Whether a site (`site`, if given) lists `model`, whatever its state."""
        return any(model in state.models for state in self._sites_for(site))

    def resolve(self, model: str) -> str:
        """The model or tribunal a request's `model` names: an alias's, else the name itself."""
        return self.config.aliases.get(model, model)

    def capabilities_of(self, model: str, site: str | None = None) -> CapabilitiesConfig | None:
        """What `model` can do at the first site (of `site`, if given) that serves it, in
        the federation's order; a tribunal's (unpinned); None if no site serves it."""
        for state in self._sites_for(site):
            if (capabilities := self._capabilities[state.name].get(model)) is not None:
                return capabilities
        if site is None and any(t.name == model for t in self.config.tribunals):
            return TRIBUNAL_CAPABILITIES
        return None

    def require_api(self, model: str, route: str, site: str | None = None) -> None:
        """400 naming the APIs `model` supports unless one is `route`'s; a route of no API
        or a model no site serves passes (placement answers the latter's 404)."""
        api = API_OF_ROUTE.get(route)
        capabilities = self.capabilities_of(model, site)
        if api is None or capabilities is None or api in (capabilities.apis or []):
            return
        raise UnsupportedApiError(
            f"The model {model!r} does not support the {api} API; it supports: "
            f"{', '.join(capabilities.apis or [])}.",
            param="model",
        )

    def models(self, caller: Principal, site: str | None = None) -> ModelList:
        """The models `caller` may use; models restricted to other groups are not shown,
        nor aliases of them."""
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
            ModelCard(
                id=model,
                created=self.started_at,
                sites=sites,
                capabilities=self._capabilities[sites[0].site][model],
            )
            for model, sites in sorted(placements.items())
        ]
        if site is None:  # a tribunal spans sites: never listed under one
            cards += [
                self._tribunal_card(tribunal)
                for tribunal in self.config.tribunals
                if all(self.policy.may_use(caller, m) for m in tribunal.members)
            ]
        # An alias shows its model's card (listed only where that one is).
        listed = {card.id: card for card in cards}
        cards += [
            listed[target].model_copy(update={"id": alias, "alias_of": target})
            for alias, target in self.config.aliases.items()
            if target in listed
        ]
        return ModelList(data=cards)

    def _tribunal_card(self, tribunal: TribunalConfig) -> ModelCard:
        members = TribunalMembers(
            generator=tribunal.generator,
            critics=tribunal.critics,
            reviser=tribunal.reviser,
            rounds=tribunal.rounds,
        )
        return ModelCard(
            id=tribunal.name,
            created=self.started_at,
            sites=[],
            tribunal=members,
            capabilities=TRIBUNAL_CAPABILITIES,
        )

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

    # -- placement ----------------------------------------------------------

    def placement_order(
        self,
        caller: Principal,
        model: str,
        site: str | None = None,
        prefix: list[bytes] | None = None,
        stream: bool = False,
    ) -> list[str]:
        """Sites to try for `model`, best first; 404 if none serves it, 503 if none can now.

        A stream goes only to sites whose transport streams (not Globus Compute's); a
        400 says so when no other site serves the model.
        """
        states = [s for s in self._sites_for(site) if model in s.models]
        if not states:
            raise self.unknown_model(caller, model, site)
        if stream:
            states = _streaming(states, model)
        now = time.monotonic()
        candidates = [c for s in states if (c := s.candidate(model, now)) is not None]
        if not candidates:
            reasons = ", ".join(f"{s.name} is {_why_not(s, model, now)}" for s in states)
            full = all(s.full(model) for s in states)
            raise NoSiteAvailableError(
                f"No site can serve the model {model!r} right now ({reasons}). Retry later.",
                retry_after_s=FULL_RETRY_AFTER_S if full else self.config.placement.retry_after_s,
            )
        ordered = self.placer.order(candidates, prefix)
        return [c.site for c in ordered[: self.config.placement.max_attempts]]

    async def place_or_cold_start(
        self,
        caller: Principal,
        model: str,
        site: str | None,
        prefix: list[bytes] | None = None,
        stream: bool = False,
    ) -> list[str]:
        """`placement_order`; when no site runs the model but a Slurm site can start it,
        start it there first (the caller is held up to `cold_start.hold_s`)."""
        try:
            return self.placement_order(caller, model, site, prefix, stream)
        except NoSiteAvailableError:
            now = time.monotonic()
            startable = [
                s
                for s in self._sites_for(site)
                if s.can_launch(model, now) and (s.config.streams or not stream)
            ]
            if not startable:
                raise
        await self.cold_starter.bring_up(model, startable)
        return self.placement_order(caller, model, site, prefix, stream)

    def require_servable(self, caller: Principal, model: str) -> None:
        """503 naming `model` unless a site can serve it now or start it (a cold start);
        what a workflow checks of every model it will call before it calls any."""
        try:
            self.placement_order(caller, model)
        except NoSiteAvailableError:
            now = time.monotonic()
            if not any(state.can_launch(model, now) for state in self.sites.values()):
                raise

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


def _streaming(states: list[SiteState], model: str) -> list[SiteState]:
    """The sites of `states` that can stream; a 400 naming the others if there are none."""
    streaming = [state for state in states if state.config.streams]
    if not streaming:
        names = ", ".join(state.name for state in states)
        raise StreamingUnsupportedError(
            f"The model {model!r} is served only by sites reached through Globus Compute "
            f"({names}), whose tasks answer whole: send `stream: false`.",
            param="stream",
        )
    return streaming


# Every site holds its max_in_flight: a place frees as soon as any of those answers ends.
FULL_RETRY_AFTER_S = 1


def _why_not(state: SiteState, model: str, now: float) -> str:
    health = state.health(now)
    if health == "down":
        return "down"
    if not state.breaker.available(now):
        return "failing requests (circuit open)"
    if state.full(model):
        return f"full ({state.config.max_in_flight} requests in flight)"
    status = state.model_status(model)
    return f"reporting the model {status.state}" if status else health
