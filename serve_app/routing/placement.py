"""Choosing the site for a request: a pure function of what the ingress knows.

The ingress knows each site's last status report (ongoing and queued requests
and ready replicas per model) and its own requests in flight there. A site's
load is everybody else's requests from the report plus this ingress's
requests in flight now, per ready replica:

    (max(reported - ours_at_report, 0) + ours_now) / ready_replicas

so a burst between two polls (reports come every few seconds, requests every
few milliseconds) spreads over the sites instead of landing on the one that
looked idlest at the last poll, and a site that answers faster, holding fewer
of our requests, gets more of them. Among equally loaded sites the one that
has answered fastest lately wins; sites within `latency_tolerance` of the
fastest take turns, so equal sites share evenly even one request at a time.
Round-robin and random exist for comparison.

`prefix-aware` is least-loaded plus cache affinity: a request whose prompt
starts like an earlier one goes first to the site that served that prefix
(serve_app/routing/prefix_affinity.py), or, for a prefix nobody remembers, to the
site rendezvous hashing picks for its first block; but only while that
site's load stays within `load_bound` times the mean load of the candidates
(plus one request), so one hot prefix cannot swamp a site (consistent
hashing with bounded loads). Past the bound, the next preferred site within
it, else least-loaded.

The answer is an ordered list: the first site gets the request, the others
are the fallbacks tried when a site fails before sending a byte.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from serve_app.config.routing import PlacementPolicy
from serve_app.routing.prefix_affinity import PrefixMemory, rendezvous_order


@dataclass(frozen=True)
class Candidate:
    """One site that serves the requested model and may take a request now."""

    site: str
    priority: int = 0
    ready_replicas: int = 0
    reported_requests: float = 0.0
    in_flight_at_report: int = 0
    in_flight: int = 0
    latency_s: float | None = None
    fresh: bool = True

    @property
    def load(self) -> float:
        """Requests per ready replica; a model with no ready replica counts as one."""
        others = max(self.reported_requests - self.in_flight_at_report, 0.0)
        return (others + self.in_flight) / max(self.ready_replicas, 1)


class Placer:
    """Orders candidates by a policy; holds only a turn counter and a random source."""

    def __init__(
        self,
        policy: PlacementPolicy,
        latency_tolerance: float = 0.25,
        seed: int | None = None,
        memory: PrefixMemory | None = None,
        load_bound: float = 1.25,
    ):
        self.policy = policy
        self.latency_tolerance = latency_tolerance
        self._turn = itertools.count()
        self._random = random.Random(seed)
        # Not `memory or ...`: an empty memory has length 0 and would be replaced.
        self.memory = memory if memory is not None else PrefixMemory(capacity=100_000)
        self.load_bound = load_bound

    def order(
        self, candidates: list[Candidate], prefix: list[bytes] | None = None
    ) -> list[Candidate]:
        """Best site first. Higher priority always comes first; within it, the policy decides.

        `prefix`: the prompt's block hashes, for `prefix-aware`.
        """
        tiers: dict[int, list[Candidate]] = {}
        for candidate in sorted(candidates, key=lambda c: c.site):
            tiers.setdefault(candidate.priority, []).append(candidate)
        return [
            c
            for priority in sorted(tiers, reverse=True)
            for c in self._order(tiers[priority], prefix)
        ]

    def remember(self, prefix: list[bytes], site: str) -> None:
        """`site` served a request with this prefix: its cache holds it now."""
        if self.policy == "prefix-aware" and prefix:
            self.memory.remember(prefix, site)

    def _order(self, tier: list[Candidate], prefix: list[bytes] | None) -> list[Candidate]:
        if self.policy == "random":
            return self._random.sample(tier, len(tier))
        if self.policy == "round-robin":
            return self._rotate(tier)
        ranked = self._least_loaded(tier)
        if self.policy == "prefix-aware" and prefix:
            affine = self._affine(tier, prefix)
            if affine is not None:
                return [affine, *(c for c in ranked if c is not affine)]
        return ranked

    def _affine(self, tier: list[Candidate], prefix: list[bytes]) -> Candidate | None:
        """The site whose cache likely holds the prefix, if within the load bound."""
        ready = {c.site: c for c in tier if c.ready_replicas > 0}
        if not ready:
            return None
        match = self.memory.longest_match(prefix, set(ready))
        preferred = rendezvous_order(prefix[0], ready)
        if match is not None:
            preferred = [match[0], *(s for s in preferred if s != match[0])]
        bound = self.load_bound * sum(c.load for c in ready.values()) / len(ready) + 1.0
        return next((ready[s] for s in preferred if ready[s].load <= bound), None)

    def _least_loaded(self, tier: list[Candidate]) -> list[Candidate]:
        ranked = sorted(tier, key=_load_key)
        best = [c for c in ranked if _load_key(c) == _load_key(ranked[0])]
        rest = ranked[len(best) :]
        known = [c.latency_s for c in best if c.latency_s is not None]
        fastest = min(known, default=0.0)
        limit = fastest * (1 + self.latency_tolerance)
        close = [c for c in best if c.latency_s is None or c.latency_s <= limit]
        slower = sorted((c for c in best if c not in close), key=lambda c: c.latency_s or 0.0)
        return self._rotate(close) + slower + rest

    def _rotate(self, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        start = next(self._turn) % len(candidates)
        return candidates[start:] + candidates[:start]


def _load_key(candidate: Candidate) -> tuple:
    """Ready replicas before none, then lowest load, then a fresh report before a stale one.

    A stale report still counts: this ingress's own requests in flight, the
    larger part of a site's load between polls, are always current.
    """
    return (candidate.ready_replicas == 0, round(candidate.load, 6), not candidate.fresh)
