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

from autoscaling.config import KeeperConfig
from deployments.config_loading import (
    ConfigError,
    StrictConfig,
    describe_validation_errors,
    load_config,
    require_unique,
)
from deployments.site_config import NAME_PATTERN, RayClusterConfig, SiteConfig
from serve_app.config.access import (
    AuthConfig,
    CacheIsolationConfig,
    LimitsConfig,
    PolicyConfig,
)
from serve_app.config.routing import (
    CircuitBreakerConfig,
    ColdStartConfig,
    PlacementConfig,
    StatusConfig,
)
from serve_app.config.storage import (
    BatchConfig,
    LedgerConfig,
    MetricsConfig,
    StoreConfig,
)
from serve_app.config.workflows import BulkConfig, RagConfig, TribunalConfig
from serve_app.settings import PREFIX

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


class EndpointEngineChannelConfig(StrictConfig):
    """Run site functions through globus-compute-endpoint's own engine, without the cloud.

    The site's endpoint process (`first site endpoint`) dials out to the gateway, takes
    tasks packed by the Globus Compute SDK's serializer, runs them in its engine's worker
    processes and sends back their packed results: serialization, the endpoint
    environment's imports, remote exceptions and the 10 MB limits are exercised as at a
    site; only the Globus cloud between the two is left out. For tests, and for sites on
    one host with the gateway or reachable by it only outbound.
    """

    kind: Literal["endpoint-engine"]
    listen: str | None = Field(
        None,
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="HOST:PORT where the gateway waits for the site's endpoint to dial in "
        f"(`first site endpoint --gateway HOST:PORT`, both with {PREFIX}ENDPOINT_KEY set). "
        "null: the gateway starts the endpoint itself on its own host.",
    )
    python: str | None = Field(
        None,
        description="Interpreter of the endpoint's environment, when the gateway starts it "
        "(it needs deployments/endpoint-requirements.txt); null: the gateway's own.",
    )
    workers: int = Field(2, ge=1, le=64, description="The engine's worker processes.")
    poll_interval_s: float = Field(2.0, gt=0, description="Seconds between two status polls.")


ChannelConfig = Annotated[
    LocalChannelConfig | GlobusComputeChannelConfig | EndpointEngineChannelConfig,
    Field(discriminator="kind"),
]
# Channels that run the site functions at the site, as a Globus Compute endpoint does.
COMPUTE_CHANNELS = ("globus-compute", "endpoint-engine")
# What one Globus Compute task, or its result, may carry.
COMPUTE_PAYLOAD_LIMIT_BYTES = 10 * 1024 * 1024


class DirectTransportConfig(StrictConfig):
    """Requests go over HTTP straight to the site's endpoint (the gateway can connect in)."""

    kind: Literal["direct"] = "direct"


class SshTunnelTransportConfig(StrictConfig):
    """Requests go through the SOCKS proxy an SSH connection from the site opens here.

    The site's connector (`first site connect`, or plain `ssh -N -R PORT`) keeps an SSH
    connection from its login node to the gateway host with reverse dynamic forwarding:
    the gateway's end is a SOCKS5 proxy on `host:port`, and what goes in comes out at the
    login node, so the site's Serve endpoint and its jobs' compute nodes are reached with
    no inbound connection at the site.
    """

    kind: Literal["ssh-tunnel"]
    port: int = Field(ge=1024, le=65535, description="The proxy's port on the gateway host.")
    host: str = Field("127.0.0.1", description="The proxy's address on the gateway host.")
    public_key: str | None = Field(
        None,
        pattern=r"^(ssh|ecdsa|sk)-\S+ \S+",
        description="The site's SSH public key, allowed to open this port and nothing else "
        "(`first gateway authorized-keys` writes the sshd authorized_keys lines).",
    )


class GlobusComputeTransportConfig(StrictConfig):
    """Each request is one task on the site's control channel, sent on from its login node.

    As FIRST v1: for sites that allow nothing but their Globus Compute endpoint. No
    streaming (a streaming request goes to another site, or gets a 400), and a request
    body over `max_payload_bytes` is refused before it is sent.
    """

    kind: Literal["globus-compute"]
    max_payload_bytes: int = Field(
        COMPUTE_PAYLOAD_LIMIT_BYTES,
        ge=1024,
        le=COMPUTE_PAYLOAD_LIMIT_BYTES,
        description="Largest request body a task may carry (Globus Compute's limit: 10 MB).",
    )


TransportConfig = Annotated[
    DirectTransportConfig | SshTunnelTransportConfig | GlobusComputeTransportConfig,
    Field(discriminator="kind"),
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
    control_s: float = Field(
        60.0,
        gt=0,
        description="Any other call through the channel: starting or stopping a model's Slurm "
        "job, staging, submitting, polling or stopping a batch.",
    )


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
    transport: TransportConfig = Field(
        default_factory=DirectTransportConfig,
        description="How the gateway's requests reach the site's endpoint: `direct` HTTP, an "
        "`ssh-tunnel` the site opens, or `globus-compute` tasks (docs/sites.md).",
    )
    priority: int = Field(
        0,
        description="Higher is preferred: sites of lower priority take a model's traffic only "
        "when no site of higher priority can.",
    )
    timeouts: SiteTimeoutsConfig = Field(default_factory=SiteTimeoutsConfig)
    max_in_flight: int | None = Field(
        1024,
        ge=1,
        description="Requests for one model that a gateway replica keeps open at this site. "
        "A full site takes no more of that model until one ends; when every site serving "
        "it is full the caller gets a 503 with Retry-After at once, so neither the gateway "
        "nor the site queues without bound. null: no bound.",
    )

    @model_validator(mode="after")
    def _transport_fits(self) -> FederatedSiteConfig:
        kind = self.transport.kind
        if kind != "direct" and self.colocated:
            raise ValueError(f"transport: a colocated site is reached directly, not by {kind}")
        if kind in ("ssh-tunnel", "globus-compute") and self.channel.kind not in COMPUTE_CHANNELS:
            # The local channel runs in the gateway, which cannot reach such a site.
            raise ValueError(
                f"transport: a site reached by {kind} runs its site functions at the site: "
                f"give it a channel of kind {' or '.join(COMPUTE_CHANNELS)}"
            )
        return self

    @property
    def streams(self) -> bool:
        """Whether requests to this site can stream (a Globus Compute task cannot)."""
        return self.transport.kind != "globus-compute"

    @property
    def site_config(self) -> SiteConfig:
        if not isinstance(self.site, SiteConfig):
            raise RuntimeError(f"site {self.name!r}: config not loaded; use load_federation")
        return self.site

    @property
    def url(self) -> str:
        return (self.base_url or self.site_config.base_url).rstrip("/")


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
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a whole request head (the request line "
        "and headers) this long after it opened, or after its last answer, is closed, so "
        "clients that never finish (slowloris) hold no connection (standalone hosting; on "
        "Serve, its ingress decides).",
    )
    stream_keepalive_s: float | None = Field(
        10.0,
        gt=0,
        description="While a streaming request waits for its first token (a cold start, a "
        "queue at the site), an SSE comment line this often keeps proxies and clients with "
        "idle timeouts from cutting it; null: none. A refusal that comes after the first "
        "comment is the stream's one event (its status is 200 by then).",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM or Ctrl-C the gateway takes no new requests and gives those "
        "in flight, streams included, this long to finish before it exits with status 0. "
        "20 s is Serve's own default, and leaves the rest of the 30 s that Slurm (KillWait) "
        "and Kubernetes wait before SIGKILL for shutting the rest down.",
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
    cache_isolation: CacheIsolationConfig = Field(default_factory=CacheIsolationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    bulk: BulkConfig = Field(default_factory=BulkConfig)
    tribunals: list[TribunalConfig] = Field(
        default_factory=list,
        description="Generate-critique-revise workflows, each called by its name as a model.",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Other names of models: alias -> the id of a model some site serves, or a "
        "tribunal's name (old or friendly names). A request naming an alias runs on its model "
        "and its answer names the alias; /v1/models lists it with `alias_of`.",
    )
    rag: RagConfig = Field(default_factory=RagConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    sites: list[FederatedSiteConfig] = Field(
        min_length=1, description="The sites behind the gateway; names must be unique."
    )

    @field_validator("sites")
    @classmethod
    def _unique_names(cls, sites: list[FederatedSiteConfig]) -> list[FederatedSiteConfig]:
        return require_unique(sites, "name", "site name")

    @field_validator("tribunals")
    @classmethod
    def _unique_tribunals(cls, tribunals: list[TribunalConfig]) -> list[TribunalConfig]:
        return require_unique(tribunals, "name", "tribunal name")

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
    def _names_served_models(self) -> FederationConfig:
        """A restricted model no site serves is a typo that would leave the real one open;
        a tribunal's member no site serves, one that could never answer."""
        if not all(isinstance(site.site, SiteConfig) for site in self.sites):
            return self  # site files not loaded yet (load_federation checks again)
        served = {m.id for site in self.sites for m in site.site_config.models}
        for model in self.policy.models:
            if model not in served:
                raise ValueError(
                    f"policy.models.{model}: no site serves this model; served: "
                    f"{', '.join(sorted(served))}"
                )
        if self.rag.embedding_model is not None and self.rag.embedding_model not in served:
            raise ValueError(
                f"rag.embedding_model: no site serves the model {self.rag.embedding_model!r}"
            )
        for index, tribunal in enumerate(self.tribunals):
            where = f"tribunals[{index}]"
            if tribunal.name in served:
                raise ValueError(f"{where}.name: {tribunal.name!r} is a model a site serves")
            for model in tribunal.members:
                if model not in served:
                    raise ValueError(
                        f"{where}: no site serves the model {model!r}; served: "
                        f"{', '.join(sorted(served))}"
                    )
        self._aliases_name_models(served)
        return self

    def _aliases_name_models(self, served: set[str]) -> None:
        """An alias stands for a served model or a tribunal, and hides neither."""
        tribunals = {tribunal.name for tribunal in self.tribunals}
        for alias, target in self.aliases.items():
            where = f"aliases.{alias}"
            if alias in served or alias in tribunals:
                kind = "a model a site serves" if alias in served else "a tribunal's name"
                raise ValueError(f"{where}: {alias!r} is {kind}; an alias needs a name of its own")
            if target not in served and target not in tribunals:
                raise ValueError(
                    f"{where}: {target!r} is neither a model a site serves nor a tribunal; "
                    f"served: {', '.join(sorted(served))}"
                )

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
