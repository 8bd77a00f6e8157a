"""OpenAI wire models: what the gateway checks before a request reaches a site.

Only what a site could choke on is typed here: the fields vLLM and
`ray.serve.llm` read, with OpenAI's ranges. Everything else passes through
untouched (`extra="allow"`), because clients send fields newer than this
file. The response models document `/openapi.json`; responses themselves
pass through from the site unparsed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIModel(BaseModel):
    """Wire models accept unknown fields and pass them on."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ContentPart(OpenAIModel):
    type: str = Field(min_length=1)


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class SamplingFields(OpenAIModel):
    """Fields chat and text completions share."""

    model: str = Field(min_length=1, description="Model id, as listed by GET /v1/models.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class ChatChoice(OpenAIModel):
    index: int
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    finish_reason: str | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(OpenAIModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage | None = None


class ModelPlacement(BaseModel):
    """Where a model runs, as the gateway last saw it."""

    site: str
    site_health: Literal["unknown", "up", "stale", "down"]
    state: str = Field(
        description="running, starting, scaled_to_zero, unhealthy, not_deployed, or unknown "
        "when the site has not reported."
    )
    ready: bool = Field(description="A replica can answer now.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "first"
    sites: list[ModelPlacement] = Field(description="The sites that serve this model.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SiteHealthReport(BaseModel):
    name: str
    health: Literal["unknown", "up", "stale", "down"]
    circuit: Literal["closed", "open", "half-open"]
    in_flight: int = Field(description="Requests this gateway replica has open at the site.")
    report_age_s: float | None = Field(description="Seconds since the last status report.")
    latency_s: float | None = Field(description="Recent time to first byte at this site.")
    error: str | None = Field(description="Why the last status call failed, if it did.")


class HealthReport(BaseModel):
    status: Literal["ok", "degraded", "no_sites"]
    sites: list[SiteHealthReport]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
