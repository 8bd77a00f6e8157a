"""Site config files: every shipped file loads, and each kind of mistake is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployments.config_loading import ConfigError, load_config
from deployments.site_config import SiteConfig

REPO = Path(__file__).resolve().parents[2]
# Federation files (they list `sites`) are checked in test_federation_config.
SITE_FILES = sorted(
    path
    for path in (REPO / "cluster_configs").glob("*.yaml")
    if "sites" not in yaml.safe_load(path.read_text())
)


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.name)
def test_every_shipped_site_file_loads(path):
    site = load_config(path, SiteConfig)
    assert site.models


def _write(tmp_path, data) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _site(**model) -> dict:
    return {"name": "s", "models": [{"id": "m", "engine": "simulated", **model}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            _site(autoscaling="hott"),
            "models[0].autoscaling: unknown preset 'hott'; use hot, warm, cold",
        ),
        (_site(engine="sglang"), "models[0].engine: Input should be 'vllm' or 'simulated'"),
        ({"name": "s", "models": [{"id": "m"}]}, "models[0].source: a vllm model needs a source"),
        (_site(engine_kwargs={"ttft": 5}), "models[0].engine_kwargs.ttft: unknown field"),
        (
            _site(engine_kwargs={"tpot_ms": -1}),
            "models[0].engine_kwargs.tpot_ms: Input should be greater",
        ),
        (
            _site(autoscaling={"min_replicas": 3, "max_replicas": 1}),
            "models[0].autoscaling: max_replicas (1) must be greater",
        ),
        (
            _site(autoscaling={"preset": "cold", "max_replica": 2}),
            "unknown autoscaling field 'max_replica'",
        ),
        (_site(resources={"cpus": 0}), "models[0].resources.cpus: Input should be greater than 0"),
        (
            _site(resources={"accelerator_type": "A100"}),
            "models[0].resources: accelerator_type needs gpus >= 1",
        ),
        ({"name": "s", "models": []}, "models: List should have at least 1 item"),
        (
            {"name": "S P", "models": [{"id": "m", "engine": "simulated"}]},
            "name: String should match pattern",
        ),
        ({**_site(), "serve": {"prot": 8000}}, "serve.prot: unknown field"),
        (
            {"name": "s", "models": [{"id": "m", "engine": "simulated"}] * 2},
            "models[1].id: duplicate model id 'm'",
        ),
        (
            _site(
                engine="vllm",
                source="org/embed",
                engine_kwargs={"runner": "pooling"},
                capabilities={"apis": ["embeddings", "chat"]},
            ),
            "models[0].capabilities.apis: an embedding model (runner: pooling) answers "
            "embeddings only, not chat",
        ),
        (
            _site(engine="vllm", source="org/chat", capabilities={"apis": ["chat", "embeddings"]}),
            "models[0].capabilities.apis: a vLLM generation model does not answer embeddings",
        ),
        (
            _site(capabilities={"apis": ["chat", "speech"]}),
            "models[0].capabilities.apis[1]: Input should be 'chat', 'completions'",
        ),
        (_site(capabilities={"context_windw": 8}), "models[0].capabilities.context_windw: unknown"),
    ],
)
def test_bad_site_file_fails_naming_file_and_field(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path, SiteConfig)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_unparseable_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "name: s\nmodels: [\n  - id: m\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path, SiteConfig)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", SiteConfig)


def test_preset_and_override_merge():
    site = SiteConfig.model_validate(_site(autoscaling={"preset": "cold", "max_replicas": 3}))
    serve = site.models[0].autoscaling.serve_config()
    assert serve["min_replicas"] == 0 and serve["initial_replicas"] == 0
    assert serve["max_replicas"] == 3


def test_a_prefix_aware_model_gets_rays_prefix_cache_affinity_router():
    from deployments.site_app import PREFIX_ROUTER, llm_config_for

    site = SiteConfig.model_validate(
        {
            "name": "s",
            "models": [
                {"id": "plain", "engine": "simulated"},
                {"id": "affine", "engine": "simulated", "request_router": "prefix-aware"},
            ],
        }
    )
    plain, affine = (llm_config_for(model).deployment_config for model in site.models)
    assert "request_router_config" not in plain
    assert affine["request_router_config"] == {"request_router_class": PREFIX_ROUTER}


@pytest.mark.parametrize(
    "source", [".first/models/missing", "models/tiny/missing", "./missing", "/no/such/model"]
)
def test_a_missing_model_folder_is_named_before_ray_starts(source):
    from deployments.site_runner import SiteStartError, check_sources

    site = SiteConfig.model_validate({"name": "s", "models": [{"id": "m", "source": source}]})
    with pytest.raises(SiteStartError, match=r"models\[0\]\.source: no model at"):
        check_sources(site)


def test_a_hub_id_is_left_for_vllm_to_fetch():
    from deployments.site_runner import check_sources

    site = SiteConfig.model_validate(
        {"name": "s", "models": [{"id": "m", "source": "meta-llama/Llama-3.1-8B-Instruct"}]}
    )
    check_sources(site)


def test_vllm_models_get_applications_of_their_own_while_haproxy_is_the_ingress():
    models = [{"id": "Org/Big.Model", "source": "org/big"}, {"id": "s", "engine": "simulated"}]
    haproxy = {"haproxy": {"enabled": True}}
    site = SiteConfig.model_validate({"name": "x", "models": models, "ray": haproxy})
    assert [m.id for m in site.direct_models()] == ["Org/Big.Model"]
    assert site.model_route(site.models[0]) == "/models/org-big-model"
    assert site.app_names() == ["site-org-big-model", "site"]
    for off in ({"serve": {"direct_streaming": False}, "ray": haproxy}, {}):
        site = SiteConfig.model_validate({"name": "x", "models": models, **off})
        assert site.direct_models() == [] and site.app_names() == ["site"]


def test_engine_metrics_can_be_switched_off_per_model():
    from deployments.site_app import llm_config_for

    site = SiteConfig.model_validate(
        {
            "name": "s",
            "models": [
                {"id": "measured", "source": "/models/m"},
                {"id": "quiet", "source": "/models/m", "engine_metrics": False},
            ],
        }
    )
    measured, quiet = (llm_config_for(model) for model in site.models)
    assert measured.log_engine_metrics and not quiet.log_engine_metrics


def _capabilities(**model) -> dict:
    return SiteConfig.model_validate(_site(**model)).models[0].resolved_capabilities().model_dump()


def test_a_vllm_models_capabilities_are_derived_from_its_engine_arguments():
    engine_kwargs = {
        "max_model_len": 8192,
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "reasoning_parser": "qwen3",
    }
    assert _capabilities(engine="vllm", source="org/qwen", engine_kwargs=engine_kwargs) == {
        "context_window": 8192,
        "input_modalities": ["text"],
        "tool_calling": True,
        "reasoning": True,
        "apis": ["chat", "completions", "responses", "messages"],
    }
    plain = _capabilities(engine="vllm", source="org/hub-only")
    assert (plain["context_window"], plain["tool_calling"], plain["reasoning"]) == (
        None,
        False,
        False,
    )


def test_a_vllm_models_context_window_falls_back_to_its_weights_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert _capabilities(engine="vllm", source=str(tmp_path))["context_window"] == 4096
    (tmp_path / "config.json").write_text("not json")
    assert _capabilities(engine="vllm", source=str(tmp_path))["context_window"] is None


def test_an_embedding_model_answers_embeddings_only():
    embedder = {"engine": "vllm", "source": "org/embed", "engine_kwargs": {"runner": "pooling"}}
    assert _capabilities(**embedder)["apis"] == ["embeddings"]


def test_the_simulated_engine_answers_every_api_with_tools_and_its_context_length():
    assert _capabilities(engine_kwargs={"max_model_len": 512}) == {
        "context_window": 512,
        "input_modalities": ["text"],
        "tool_calling": True,
        "reasoning": False,
        "apis": ["chat", "completions", "embeddings", "responses", "messages"],
    }


def test_declared_capabilities_win_and_the_rest_are_derived():
    declared = {"context_window": 100, "input_modalities": ["text", "image"], "apis": ["chat"]}
    assert _capabilities(capabilities=declared) == {
        "context_window": 100,
        "input_modalities": ["text", "image"],
        "tool_calling": True,
        "reasoning": False,
        "apis": ["chat"],
    }
    assert _capabilities(capabilities={"tool_calling": False})["tool_calling"] is False
