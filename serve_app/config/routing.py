"""How the gateway watches its sites and chooses among them: status, breaker, placement, cold start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployments.config_loading import StrictConfig

PlacementPolicy = Literal["least-loaded", "round-robin", "random", "prefix-aware"]


class StatusConfig(StrictConfig):
    """When a site's status counts as stale, and when the site counts as down."""

    stale_after_polls: float = Field(
        3.0, gt=0, description="A report older than this many poll intervals is stale."
    )
    down_after_failures: int = Field(
        2, ge=1, description="Failed status calls in a row that mark a site down."
    )


class CircuitBreakerConfig(StrictConfig):
    """Stop sending to a site that keeps failing requests; probe it again later."""

    failure_threshold: int = Field(
        3, ge=1, description="Request failures in a row that open the circuit."
    )
    open_s: float = Field(
        10.0, gt=0, description="How long an open circuit refuses before one probe request."
    )


class PrefixAffinityConfig(StrictConfig):
    """How `prefix-aware` placement recognises a shared prompt prefix, and how far it follows it."""

    block_chars: int = Field(
        256, ge=16, description="Characters per hashed block of the prompt (its JSON text)."
    )
    max_blocks: int = Field(64, ge=1, description="Blocks hashed at most per prompt.")
    memory_blocks: int = Field(
        200_000, ge=1, description="Block hashes remembered per gateway replica (LRU)."
    )
    load_bound: float = Field(
        1.25,
        ge=1.0,
        description="A site keeps a prefix's requests while its load is at most this many "
        "times the mean load of the sites (plus one request); past it, least-loaded decides.",
    )


class PlacementConfig(StrictConfig):
    """Which site a request goes to, and how many are tried when one fails before answering."""

    policy: PlacementPolicy = Field(
        "least-loaded",
        description="least-loaded, round-robin, random, or prefix-aware (least-loaded plus "
        "affinity to the site that holds the prompt's prefix in its cache).",
    )
    prefix: PrefixAffinityConfig = Field(default_factory=PrefixAffinityConfig)
    latency_tolerance: float = Field(
        0.25,
        ge=0,
        description="Equally loaded sites within this fraction of the fastest take turns.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Sites tried for one request when each fails before its first byte."
    )
    retry_after_s: int = Field(
        10,
        ge=1,
        description="Retry-After sent with a 503 when no site can serve (1 s when every site "
        "is only full: a place frees as soon as one answer ends).",
    )


class ColdStartConfig(StrictConfig):
    """Requests for a model that runs nowhere but a Slurm site can start (FIRST's cold start)."""

    hold_s: float = Field(
        30.0,
        ge=0,
        description="How long a request waits for the model to start before it gets 503 with "
        "Retry-After (0: answer at once).",
    )
    expected_start_s: float = Field(
        300.0,
        gt=0,
        description="Retry-After estimate for a model never seen starting at a site; later "
        "estimates come from the start times observed.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="Status polls of a site while a start there is awaited."
    )
    max_failed_starts: int = Field(
        2,
        ge=1,
        description="Jobs in a row that may die while starting before no more are submitted "
        "for that model (until the failures are an hour old, or an operator launches one).",
    )
