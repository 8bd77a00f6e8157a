"""The federation config: which sites the gateway fronts, how it reaches them, how it chooses.

One YAML file (`cluster_configs/local-federation.yaml` is the embedded
default). Each site names its site config (the file the site itself runs
from), so the gateway knows the site's models before the site ever answers
and the status function knows where the site's dashboard is. Loaded once at
the edge by `load_federation`, which resolves those files relative to the
federation file and inlines them, so the config travels to Serve replicas as
one self-contained object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, ValidationError, field_validator, model_validator
from ray.serve.config import AutoscalingConfig

from deployments.config_loading import (
    AbsolutePath,
    ConfigError,
    StrictConfig,
    describe_validation_errors,
    load_config,
    require_unique,
)
from deployments.site_config import NAME_PATTERN, RayClusterConfig, SiteConfig
from serve_app.placement import PlacementPolicy

# Where a site that shares the gateway's Ray cluster is mounted on the shared Serve proxy.
COLOCATED_PREFIX = "/_sites"


class LocalChannelConfig(StrictConfig):
    """Run site functions in the gateway's own process (one machine, tests)."""

    kind: Literal["local"] = "local"
    poll_interval_s: float = Field(2.0, gt=0, description="Seconds between two status polls.")


class GlobusComputeChannelConfig(StrictConfig):
    """Run site functions on the site's Globus Compute endpoint (production, as in FIRST)."""

    kind: Literal["globus-compute"]
    endpoint_id: UUID = Field(description="The site's Globus Compute endpoint id.")
    poll_interval_s: float = Field(
        15.0, gt=0, description="Seconds between two status polls (each is a Compute task)."
    )


ChannelConfig = Annotated[
    LocalChannelConfig | GlobusComputeChannelConfig, Field(discriminator="kind")
]


class SiteTimeoutsConfig(StrictConfig):
    """How long the gateway waits on a site, per step of a request."""

    connect_s: float = Field(3.0, gt=0, description="Opening a connection to the site.")
    first_byte_s: float = Field(
        300.0,
        gt=0,
        description="From sending a request to the response headers. A non-streaming "
        "completion sends its headers only when generation ends, so allow for that.",
    )
    read_s: float = Field(
        60.0, gt=0, description="Longest silence between two chunks of a started response."
    )
    total_s: float = Field(900.0, gt=0, description="Whole request, first byte to last.")
    status_s: float = Field(10.0, gt=0, description="One status call through the channel.")


class FederatedSiteConfig(StrictConfig):
    """One site behind the gateway."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name, used in /sites/{name}/v1.")
    site: SiteConfig | str = Field(
        description="The site's own config: a path to its YAML file (relative to this file) "
        "or the same mapping inline."
    )
    base_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL of the site's Serve HTTP endpoint as the gateway reaches it "
        "(default: the one the site config describes).",
    )
    colocated: bool = Field(
        False,
        description="Run this site's models on the gateway's own Ray cluster, behind the same "
        f"Serve proxy under {COLOCATED_PREFIX}/NAME (the embedded default).",
    )
    channel: ChannelConfig = Field(default_factory=LocalChannelConfig)
    priority: int = Field(
        0,
        description="Higher is preferred: sites of lower priority take a model's traffic only "
        "when no site of higher priority can.",
    )
    timeouts: SiteTimeoutsConfig = Field(default_factory=SiteTimeoutsConfig)

    @property
    def site_config(self) -> SiteConfig:
        if not isinstance(self.site, SiteConfig):
            raise RuntimeError(f"site {self.name!r}: config not loaded; use load_federation")
        return self.site

    @property
    def url(self) -> str:
        return (self.base_url or self.site_config.base_url).rstrip("/")


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
        10, ge=1, description="Retry-After sent with a 503 when no site can serve."
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
    launch_timeout_s: float = Field(60.0, gt=0, description="One launch call through the channel.")


class KeeperConfig(StrictConfig):
    """The hot-node keeper: Slurm allocations per model, kept, replaced, added, released."""

    interval_s: float = Field(15.0, gt=0, description="Seconds between two looks at each site.")
    drain_s: float = Field(
        30.0,
        ge=0,
        description="How long a job that a ready replacement took over keeps running (its "
        "requests finish) before it is cancelled.",
    )
    scale_up_queue: float = Field(
        8.0,
        gt=0,
        description="Requests waiting per ready allocation above which, held for "
        "scale_up_window_s, one more allocation is started (up to allocations.max).",
    )
    scale_up_window_s: float = Field(60.0, ge=0, description="How long the queue must stay high.")
    idle_window_s: float = Field(
        900.0,
        gt=0,
        description="An allocation is released after this long without requests, never going "
        "below the model's minimum (hot: 1).",
    )
    in_gateway: bool = Field(
        False,
        description="Run the keeper inside the gateway (one more Serve deployment on the "
        "gateway's Ray cluster, or a task of the standalone gateway) instead of as "
        "`first keeper run`.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port for the Prometheus metrics of `first keeper run`.",
    )


class GatewayConfig(StrictConfig):
    """Where the gateway listens, and the Ray cluster that hosts it under Serve."""

    host: str = Field("127.0.0.1", description="Bind address of the public endpoint.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the public endpoint.")
    app_name: str = Field("gateway", pattern=NAME_PATTERN, description="Serve application name.")
    ray: RayClusterConfig = Field(default_factory=RayClusterConfig)
    autoscaling: dict[str, Any] = Field(
        default_factory=lambda: {
            "min_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": 64,
        },
        description="Serve autoscaling_config of the ingress deployment (Serve hosting only).",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )

    @field_validator("autoscaling")
    @classmethod
    def _serve_accepts(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            AutoscalingConfig(**value)
        except ValidationError as exc:
            raise ValueError(describe_validation_errors(exc)) from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return value


class GlobusAuthConfig(StrictConfig):
    """Accept Globus Auth access tokens issued for this gateway (FIRST's sign-in).

    The gateway is a Globus resource server: its confidential client's id and
    secret come from FIRST_GLOBUS_CLIENT_ID / FIRST_GLOBUS_CLIENT_SECRET or the
    secrets file, never from this file.
    """

    scope: str = Field(
        min_length=1,
        description="The gateway's own scope string; a token must carry it in `scope` "
        "(or name `audience` in `aud`).",
    )
    audience: str | None = Field(
        None, description="Resource server name accepted in a token's `aud` (default: none)."
    )
    secrets_file: Path | None = Field(
        None,
        description="YAML file with client_id and client_secret, for sites that keep secrets "
        "in files (the environment wins when both are set).",
    )
    http_timeout_s: float = Field(5.0, gt=0, description="One call to Globus Auth or Groups.")
    max_retries: int = Field(1, ge=0, description="Retries of a failed call to Globus.")


class CredentialCacheConfig(StrictConfig):
    """How long a checked credential is trusted without asking again."""

    max_s: float = Field(
        600.0, gt=0, description="Longest a validated Globus token is trusted (capped by its exp)."
    )
    failure_s: float = Field(
        10.0, ge=0, description="How long a refused credential is remembered as refused."
    )
    api_key_s: float = Field(
        10.0, gt=0, description="How long an API key is trusted; a revoked key stops this soon."
    )


class AuthConfig(StrictConfig):
    """Who may call: API keys from the store, Globus Auth tokens, or (tests only) anyone."""

    required: bool = Field(
        True,
        description="False: no credential is checked and every caller is 'anonymous' (closed "
        "networks and tests only).",
    )
    api_keys: bool = Field(True, description="Accept API keys made with `first keys create`.")
    globus: GlobusAuthConfig | None = Field(None, description="Accept Globus Auth tokens.")
    cache: CredentialCacheConfig = Field(default_factory=CredentialCacheConfig)
    max_credential_bytes: int = Field(
        4096, ge=64, description="Longer Authorization headers are refused with 401."
    )


class ModelAccessConfig(StrictConfig):
    groups: list[str] = Field(
        min_length=1, description="Only members of one of these groups see and use the model."
    )


class PolicyConfig(StrictConfig):
    """What an authenticated caller may do. API keys carry the groups given at creation."""

    identity_domains: list[str] = Field(
        default_factory=list,
        description="Globus logins whose username ends in @DOMAIN for one of these are allowed "
        "(with identity_providers: either allowlist suffices; both empty: any).",
    )
    identity_providers: list[str] = Field(
        default_factory=list, description="Globus identity provider ids whose logins are allowed."
    )
    groups: list[str] = Field(
        default_factory=list,
        description="Callers must belong to one of these groups (Globus group ids, or the "
        "groups of an API key); empty: any caller.",
    )
    models: dict[str, ModelAccessConfig] = Field(
        default_factory=dict, description="Models restricted to some groups, by model id."
    )
    admin_groups: list[str] = Field(
        default_factory=list,
        description="Members of these groups may read everyone's usage (GET /v1/usage).",
    )

    @property
    def uses_groups(self) -> bool:
        return bool(self.groups or self.models or self.admin_groups)


class UserLimitsConfig(StrictConfig):
    requests_per_s: float | None = Field(None, gt=0, description="Overrides the default.")
    tokens_per_min: int | None = Field(None, gt=0, description="Overrides the default.")


class LimitsConfig(StrictConfig):
    """Per-user and per-model limits, shared by every ingress replica. null: no limit."""

    requests_per_s: float | None = Field(10.0, gt=0, description="Requests per second per user.")
    burst: float | None = Field(
        None, gt=0, description="Requests a user may send at once (default: one second's worth)."
    )
    tokens_per_min: int | None = Field(
        60_000, gt=0, description="Prompt plus completion tokens per minute per user."
    )
    model_tokens_per_min: int | None = Field(
        100_000, gt=0, description="Tokens per minute per model, all users together."
    )
    users: dict[str, UserLimitsConfig] = Field(
        default_factory=dict, description="Limits for particular users (service accounts)."
    )
    models: dict[str, int] = Field(
        default_factory=dict, description="Tokens per minute for particular models."
    )

    def for_user(self, user: str) -> UserLimitsConfig:
        """The user's effective request and token limits."""
        override = self.users.get(user, UserLimitsConfig())
        return UserLimitsConfig(
            requests_per_s=override.requests_per_s or self.requests_per_s,
            tokens_per_min=override.tokens_per_min or self.tokens_per_min,
        )

    def for_model(self, model: str) -> int | None:
        return self.models.get(model, self.model_tokens_per_min)


class StoreConfig(StrictConfig):
    """Where API keys, the usage ledger, files and batches live: one SQLite file shared by
    the replicas, and a folder for file contents."""

    kind: Literal["sqlite"] = "sqlite"
    path: AbsolutePath = Field(
        Path(".first/first.db"),
        validate_default=True,
        description="SQLite file; a relative path is taken from the directory `first` runs in.",
    )
    files_dir: AbsolutePath | None = Field(
        None,
        description="Contents of uploaded files and batch results (default: `files` beside "
        "the SQLite file).",
    )

    @property
    def files_path(self) -> Path:
        return self.files_dir or self.path.parent / "files"


class BatchConfig(StrictConfig):
    """The Files and Batches API: what an upload may hold, and how batches are looked after."""

    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest input file (OpenAI's limit: 200 MB)."
    )
    max_lines: int = Field(
        50_000, ge=1, description="Most requests in one input file (OpenAI's limit)."
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often a running batch's results are collected from its site (less "
        "often for a long log: reading it takes at most 5% of the time).",
    )
    lease_s: float = Field(
        20.0,
        gt=0,
        description="A gateway process that stops renewing a batch's lease this long (it "
        "died) lets another take the batch over.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Ray jobs tried for one batch when one is lost (its cluster went away); "
        "each runs only the lines still unanswered.",
    )
    stage_part_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Input sent to the site per control-channel call (Globus Compute caps "
        "a task's payload at 10 MB).",
    )


class LedgerConfig(StrictConfig):
    """One usage record per request, written off the request path in batches."""

    enabled: bool = True
    flush_interval_s: float = Field(1.0, gt=0, description="Longest a record waits unwritten.")
    batch_size: int = Field(500, ge=1, description="Records written in one transaction.")
    store_content: bool = Field(
        False, description="Also store prompts and completions (off: only counts)."
    )


class MetricsConfig(StrictConfig):
    """The gateway's Prometheus metrics, at `GET /metrics` (monitoring/ scrapes them)."""

    enabled: bool = Field(True, description="false: record nothing and answer 404 at /metrics.")
    multiprocess_dir: str | None = Field(
        None,
        description="Folder on the gateway's node where its Serve processes write their "
        "samples for /metrics to add up; emptied at start. Default: "
        "<temp dir>/first-metrics-<gateway port>.",
    )
    ttft_objective_s: float = Field(
        2.0,
        gt=0,
        description="Objective for the p99 time to first token of streamed requests; "
        "monitoring/alerts.yml alerts above it (exported as "
        "first_time_to_first_token_objective_seconds).",
    )


class FederationConfig(StrictConfig):
    """The gateway and the sites it federates."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    keeper: KeeperConfig = Field(default_factory=KeeperConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    limits: LimitsConfig | None = Field(
        default_factory=LimitsConfig, description="null: no limits."
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    sites: list[FederatedSiteConfig] = Field(min_length=1)

    @field_validator("sites")
    @classmethod
    def _unique_names(cls, sites: list[FederatedSiteConfig]) -> list[FederatedSiteConfig]:
        return require_unique(sites, "name", "site name")

    @model_validator(mode="after")
    def _colocate(self) -> FederationConfig:
        """A colocated site runs on the gateway's cluster and proxy, under its own prefix."""
        for index, site in enumerate(self.sites):
            if site.colocated and isinstance(site.site, SiteConfig) and site.site.slurm:
                raise ValueError(
                    f"sites[{index}].colocated: the site's models run in Slurm jobs (its "
                    "`slurm` section), not on the gateway's Ray cluster"
                )
            if site.colocated and isinstance(site.site, SiteConfig):
                config = site.site.model_copy(deep=True)
                config.ray = self.gateway.ray
                config.serve.host = self.gateway.host
                config.serve.port = self.gateway.port
                config.serve.app_name = f"site-{site.name}"
                config.serve.route_prefix = f"{COLOCATED_PREFIX}/{site.name}"
                object.__setattr__(site, "site", config)
        return self

    @model_validator(mode="after")
    def _policy_names_served_models(self) -> FederationConfig:
        """A restricted model no site serves is a typo that would leave the real one open."""
        if not all(isinstance(site.site, SiteConfig) for site in self.sites):
            return self  # site files not loaded yet (load_federation checks again)
        served = {m.id for site in self.sites for m in site.site_config.models}
        for model in self.policy.models:
            if model not in served:
                raise ValueError(
                    f"policy.models.{model}: no site serves this model; served: "
                    f"{', '.join(sorted(served))}"
                )
        return self

    def site(self, name: str) -> FederatedSiteConfig:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    @property
    def slurm_sites(self) -> list[SiteConfig]:
        return [s.site_config for s in self.sites if s.site_config.slurm is not None]

    @property
    def colocated_sites(self) -> list[SiteConfig]:
        return [s.site_config for s in self.sites if s.colocated]


def load_federation(path: str | Path) -> FederationConfig:
    """Load a federation file and the site files it names; ConfigError names the bad field."""
    path = Path(path)
    config = load_config(path, FederationConfig)
    data = config.model_dump(exclude_unset=True)
    for index, site in enumerate(config.sites):
        if isinstance(site.site, str):
            site_path = path.parent / site.site
            try:
                loaded = load_config(site_path, SiteConfig)
            except ConfigError as exc:
                raise ConfigError(f"{path}: sites[{index}].site: {exc}") from None
            data["sites"][index]["site"] = loaded.model_dump()
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_errors(exc)}") from None
