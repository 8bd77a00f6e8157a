"""The site's Serve applications: one ray.serve.llm deployment per model behind one OpenAI ingress,
and, for each vLLM model, an application of its own that streams straight from its replicas.

Built with Ray's public pieces (`LLMConfig`, `build_llm_deployment`,
`make_fastapi_ingress`, `OpenAiIngress`) instead of `build_openai_app`,
because that builder gives no way to install our error handlers on its
FastAPI app. The app set-up mirrors Ray's own (request ids, CORS, HTTP
metrics) so nothing of Ray's behaviour is lost.

Direct streaming (Ray Serve LLM's, built with the pieces `build_openai_app`
uses when RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING is set, which it allows for
one model only): the model's LLMServer deployment is itself the ingress of an
application and serves vLLM's own OpenAI app (the one `vllm serve` runs), and
HAProxy picks the replica (asking Ray's LLMRouter for a prefix-aware model), so a streamed
token crosses no Python proxy or ingress replica. The site's multi-model
ingress calls the same deployment through a handle, for clients that call the
site directly.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from ray.llm._internal.common.utils.lora_utils import get_base_model_id
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.builder import (
    _build_direct_streaming_llm_deployment,
    _build_openai_ingress_request_router,
)
from ray.llm._internal.serve.core.ingress.middleware import SetRequestIdMiddleware
from ray.llm._internal.serve.observability.metrics.fast_api_metrics import (
    add_http_metrics_middleware,
    metrics_lifespan,
)
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from deployments.serve_logging import quiet_terminal
from deployments.site_config import SIMULATED_ENGINE_KEY, ModelConfig, SiteConfig
from deployments.site_errors import (
    MissingModelError,
    ModelFullError,
    UnknownModelError,
    register_error_handlers,
)

# Ray's default for the ingress is effectively unbounded; the engines queue.
INGRESS_MAX_ONGOING_REQUESTS = 10_000


class SiteIngress(OpenAiIngress):
    """Ray's OpenAI ingress, answering unknown or missing models with OpenAI errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        quiet_terminal()

    async def _get_response(self, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Ray's, with a full model's refusal in the OpenAI shape: Serve answers its
        BackPressureError with a plain-text 503 of its own."""
        try:
            async for response in super()._get_response(**kwargs):
                yield response
        except BackPressureError as exc:
            model = kwargs["body"].model
            queued = exc.args[1]  # max_queued_requests; Ray keeps the arguments only
            raise ModelFullError(model, queued, FULL_RETRY_AFTER_S) from None

    async def _get_model_id(self, model: str | None) -> str:
        served = list(self._model_cards)
        if model is None:
            if len(served) == 1:
                return served[0]
            raise MissingModelError(served)
        if get_base_model_id(model) not in self._model_cards:
            raise UnknownModelError(model, served)
        return model


def _placement_bundles(model: ModelConfig) -> list[dict[str, float]]:
    """One bundle per GPU (tensor parallel workers), or one CPU bundle for CPU engines."""
    resources = model.resources
    if resources.gpus == 0:
        return [{"CPU": resources.cpus}]
    return [{"GPU": 1, "CPU": resources.cpus}] * resources.gpus


FULL_RETRY_AFTER_S = 2
PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"


def _deployment_config(model: ModelConfig) -> dict[str, Any]:
    config: dict[str, Any] = {
        "autoscaling_config": model.autoscaling.serve_config(),
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
        # A full site's 503 says when to come back: its queue drains in about that.
        "backpressure_config": {"retry_after_s": FULL_RETRY_AFTER_S},
    }
    if model.request_router == "prefix-aware":
        config["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    return config


def llm_config_for(model: ModelConfig) -> LLMConfig:
    """Translate one model of the site config into ray.serve.llm's LLMConfig."""
    experimental: dict[str, Any] = {}
    if model.stream_interval_ms is not None:
        experimental["stream_batching_interval_ms"] = model.stream_interval_ms
    simulated = model.engine == "simulated"
    if simulated:
        # Not in engine_kwargs: Ray validates those as vLLM arguments.
        experimental[SIMULATED_ENGINE_KEY] = model.simulated_engine().model_dump()
    return LLMConfig(
        model_loading_config={"model_id": model.id, "model_source": model.source or model.id},
        engine_kwargs={} if simulated else model.engine_kwargs,
        placement_group_config={"bundles": _placement_bundles(model)},
        accelerator_type=model.resources.accelerator_type,
        runtime_env={"env_vars": model.env} if model.env else None,
        deployment_config=_deployment_config(model),
        experimental_configs=experimental,
        server_cls="deployments.simulated_engine:SimulatedLLMServer" if simulated else None,
        # The simulated engine exports no vLLM metrics.
        log_engine_metrics=model.engine_metrics and not simulated,
    )


def build_site_fastapi() -> FastAPI:
    """Ray's ingress app set-up, with the OpenAI error handlers in place of Ray's."""
    app = FastAPI(
        title="FIRST site",
        description="OpenAI-compatible endpoint of one FIRST site (Ray Serve + vLLM).",
        lifespan=metrics_lifespan,
    )
    register_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    add_http_metrics_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    return app


def build_model_app(model: ModelConfig) -> Application:
    """A directly streamed model's own application: its LLMServer deployment as the ingress.

    HAProxy balances its replicas by least connections (what Serve's default
    router weighs too), so only a prefix-aware model gets Ray's LLMRouter, which
    HAProxy asks for every request (its cost: bench/README.md, "What a site
    model's options cost"). Without that router, Ray's own default of a custom
    RoundRobinRouter is refused on an ingress under HAProxy, so Serve's default
    router config goes in its place.
    """
    config = llm_config_for(model)
    prefix_aware = model.request_router == "prefix-aware"
    server = _build_direct_streaming_llm_deployment(
        config,
        name_prefix="LLMServer:",
        override_serve_options=None
        if prefix_aware
        else {"request_router_config": RequestRouterConfig()},
    )
    if not prefix_aware:
        return server
    return server._with_ingress_request_router(
        _build_openai_ingress_request_router(server=server, llm_config=config)
    )


def build_site_app(site: SiteConfig, direct: dict[str, DeploymentHandle]) -> Application:
    """The site's multi-model application: one ingress over an LLMServer deployment per
    model, or over the handle of a model's own application (`direct`, by model id)."""
    llm_configs = [llm_config_for(model) for model in site.models]
    deployments: dict[str, Application | DeploymentHandle] = {
        config.model_id: direct.get(config.model_id)
        or build_llm_deployment(config, name_prefix="LLMServer:")
        for config in llm_configs
    }
    model_cards = {
        config.model_id: to_model_metadata(config.model_id, config) for config in llm_configs
    }
    ingress_cls = make_fastapi_ingress(SiteIngress, app=build_site_fastapi())
    # One ingress replica always, even when every model scales to zero: it is
    # cheap, and a scaled-to-zero ingress would add its own cold start.
    ingress = serve.deployment(
        ingress_cls,
        name="OpenAiIngress",
        num_replicas=1,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    )
    return ingress.bind(llm_deployments=deployments, model_cards=model_cards, lora_paths={})
