"""What a model can do: the `capabilities` of a site's model, declared or derived.

`GET /v1/models` shows them, and the gateway refuses a request whose API a
model does not answer (`apis`) before any site is called. A field a site
file leaves unset is derived from the model's engine and its arguments
(`resolved_capabilities`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import Field

from deployments.config_loading import StrictConfig

if TYPE_CHECKING:
    from deployments.site_config import ModelConfig

# The APIs a model may answer at the gateway; the gateway maps its routes onto them.
Api = Literal["chat", "completions", "embeddings", "responses", "messages"]
GENERATION_APIS: list[Api] = ["chat", "completions", "responses", "messages"]


class CapabilitiesConfig(StrictConfig):
    """What a model can do, as /v1/models tells clients; a field left unset is derived from
    the model's engine and engine_kwargs (`resolved_capabilities`)."""

    context_window: int | None = Field(
        None,
        ge=1,
        description="Tokens the model holds, prompt plus output (unset: vLLM's max_model_len, "
        "else max_position_embeddings of config.json in a local `source` folder; the simulated "
        "engine's max_model_len).",
    )
    input_modalities: list[Literal["text", "image", "audio", "video"]] | None = Field(
        None,
        min_length=1,
        description="What a prompt may hold: text, image, audio, video (unset: text).",
    )
    tool_calling: bool | None = Field(
        None,
        description="Answers with tool calls (unset: vLLM's enable_auto_tool_choice; the "
        "simulated engine does).",
    )
    reasoning: bool | None = Field(
        None,
        description="Answers carry the model's reasoning apart from its content (unset: "
        "whether vLLM has a reasoning_parser; the simulated engine does not).",
    )
    apis: list[Api] | None = Field(
        None,
        min_length=1,
        description="The gateway's APIs the model answers: chat, completions, embeddings, "
        "responses (OpenAI's Responses), messages (Anthropic's Messages); the gateway refuses "
        "the others with 400 before any site is called. Unset: embeddings for an embedding "
        "model (runner: pooling), the other four for vLLM, all five for the simulated engine.",
    )


def resolved_capabilities(model: ModelConfig) -> CapabilitiesConfig:
    """`model`'s declared capabilities, every unset one derived from its engine (reads the
    weights' config.json when vLLM has no max_model_len and `source` is a folder)."""
    simulated = model.engine == "simulated"
    if model.embeds:
        apis: list[Api] = ["embeddings"]
    else:  # the simulated engine answers every API, embeddings too
        apis = list(get_args(Api)) if simulated else list(GENERATION_APIS)
    kwargs = model.engine_kwargs
    derived = CapabilitiesConfig(
        context_window=_context_window(model),
        input_modalities=["text"],
        tool_calling=simulated or bool(kwargs.get("enable_auto_tool_choice")),
        reasoning=not simulated and bool(kwargs.get("reasoning_parser")),
        apis=apis,
    )
    return derived.model_copy(update=model.capabilities.model_dump(exclude_none=True))


def apis_mistake(model: ModelConfig) -> str | None:
    """What is wrong with the APIs `model` declares, for its validator; None if nothing."""
    apis = model.capabilities.apis or []
    if model.embeds and (generation := [api for api in apis if api != "embeddings"]):
        return (
            "capabilities.apis: an embedding model (runner: pooling) answers embeddings only, "
            f"not {', '.join(generation)}"
        )
    if model.engine == "vllm" and not model.embeds and "embeddings" in apis:
        return (
            "capabilities.apis: a vLLM generation model does not answer embeddings; remove "
            "it, or serve the model as an embedding model (runner: pooling)"
        )
    return None


def _context_window(model: ModelConfig) -> int | None:
    if model.engine == "simulated":
        return model.simulated_engine().max_model_len
    if (length := model.engine_kwargs.get("max_model_len")) is not None:
        return int(length)
    weights = Path(str(model.source)) / "config.json"  # vLLM models have a source
    try:
        config = json.loads(weights.read_text())
    except (OSError, ValueError):
        return None  # a hub id, or weights this host cannot read
    length = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return length if isinstance(length, int) else None
