"""OpenAI wire models: what the gateway checks before a request reaches a site.

Only what a site could choke on is typed here: the fields vLLM and
`ray.serve.llm` read, with OpenAI's ranges. Everything else passes through
untouched (`extra="allow"`), because clients send fields newer than this
file. The response models document `/openapi.json`; responses themselves
pass through from the site unparsed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.capabilities import CapabilitiesConfig
from deployments.openai_errors import ErrorDetail


class OpenAIModel(BaseModel):
    """Wire models accept unknown fields and pass them on."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class MediaURL(OpenAIModel):
    url: str = Field(min_length=1)


class ImageURLPart(OpenAIModel):
    type: Literal["image_url"]
    image_url: MediaURL


class InputAudio(OpenAIModel):
    data: str
    format: str


class InputAudioPart(OpenAIModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class RefusalPart(OpenAIModel):
    type: Literal["refusal"]
    refusal: str


class AudioURLPart(OpenAIModel):
    """vLLM's extension."""

    type: Literal["audio_url"]
    audio_url: MediaURL


class VideoURLPart(OpenAIModel):
    """vLLM's extension."""

    type: Literal["video_url"]
    video_url: MediaURL


# Checked here because stock ray.serve.llm only finds a malformed part after
# validation, and answers it with 500.
ContentPart = Annotated[
    TextPart | ImageURLPart | InputAudioPart | RefusalPart | AudioURLPart | VideoURLPart,
    Field(discriminator="type"),
]


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    # A malformed call makes vLLM read the message as another role's, and fail later.
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _fits_the_role(self) -> ChatMessage:
        """OpenAI's per-role rules. vLLM reads a message that breaks them as another
        kind of message, finds the mismatch only after validation, and answers 500."""
        allowed = PARTS_BY_ROLE[self.role]
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part, allowed):
                    names = ", ".join(_part_type(kind) for kind in allowed)
                    raise ValueError(
                        f"a message with role {self.role} may hold {names} content parts, "
                        f"not {part.type}"
                    )
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls belong to assistant messages, not {self.role}")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id belongs to tool messages, not {self.role}")
        return self

    def text(self) -> str:
        """The message's text: its content, or its text parts joined (media left out)."""
        if isinstance(self.content, list):
            return " ".join(getattr(part, "text", "") or "" for part in self.content)
        return self.content or ""


TEXT_ONLY: tuple[type, ...] = (TextPart,)
# vLLM also takes audio and video by URL from users, and whatever "function" sends.
PARTS_BY_ROLE: dict[str, tuple[type, ...]] = {
    "system": TEXT_ONLY,
    "developer": TEXT_ONLY,
    "tool": TEXT_ONLY,
    "function": TEXT_ONLY,
    "assistant": (TextPart, RefusalPart),
    "user": (TextPart, ImageURLPart, InputAudioPart, AudioURLPart, VideoURLPart),
}


def _part_type(kind: type) -> str:
    return kind.model_fields["type"].annotation.__args__[0]


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


class ChatFields(SamplingFields):
    """Fields a chat completion and a bulk of them share."""

    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None


class ChatCompletionRequest(ChatFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    first_trace: bool | None = Field(
        None,
        exclude=True,  # the gateway's own: never sent on to a site
        description="Tribunals only: answer with `first_trace`, every step of the workflow.",
    )


class BulkChatCompletionRequest(ChatFields):
    """vLLM's `/v1/chat/completions/batch`: `messages` is a list of conversations, every
    other field is shared by all of them. As in vLLM: no streaming, and `n` is 1."""

    messages: list[Annotated[list[ChatMessage], Field(min_length=1)]] = Field(
        min_length=1, description="The conversations, each a list of messages."
    )
    stream: Literal[False] | None = Field(
        None, description="Not supported: a bulk answer comes whole."
    )
    n: Literal[1] | None = Field(None, description="One choice per conversation.")

    def conversation(self, index: int) -> ChatCompletionRequest:
        """Conversation `index` as a chat completion of its own, with the shared fields."""
        shared = self.model_dump(exclude={"messages"}, exclude_none=True)
        return ChatCompletionRequest.model_validate({**shared, "messages": self.messages[index]})


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists; the "
        "prompts of a list are placed one by one (not when streamed)."
    )
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str] | list[list[int]] | None:
        """The prompts of a list `prompt` that can go to the sites one by one; None for one
        prompt, or for a stream (its choices interleave: it goes to one site whole)."""
        prompt = self.prompt
        if self.stream or not isinstance(prompt, list) or len(prompt) < 2:
            return None
        if isinstance(prompt[0], int):  # one prompt's token ids
            return None
        return prompt  # type: ignore[return-value]


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists."
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]] | None:
        """The inputs of a list `input`; None for one input."""
        value = self.input
        if not isinstance(value, list) or not value or isinstance(value[0], int):
            return None
        return value  # type: ignore[return-value]


class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class ChatChoice(OpenAIModel):
    index: int
    message: ChatMessage
    finish_reason: str | None = None


class TribunalStep(BaseModel):
    """One model call of a tribunal."""

    step: Literal["generate", "critique", "revise"]
    round: int = Field(description="0 for generate, then 1, 2, ... for each round.")
    model: str
    site: str | None = Field(description="The site that answered.")
    content: str
    usage: Usage | None
    started_at: float = Field(description="Unix time the call was sent.")
    duration_s: float


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    first_trace: list[TribunalStep] | None = Field(
        None, description="A tribunal's steps, in order, when the request set `first_trace`."
    )


class BulkChatChoice(OpenAIModel):
    """One conversation's answer; a conversation that failed has `error` instead."""

    index: int
    message: ChatMessage | None = None
    finish_reason: str | None = None
    error: ErrorDetail | None = None


class BulkChatCompletionResponse(ChatCompletionResponse):
    """A chat completion whose choices may carry an error, its usage summed over them."""

    choices: list[BulkChatChoice]  # type: ignore[assignment]
    usage: Usage


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    finish_reason: str | None = None


class BulkCompletionChoice(OpenAIModel):
    """One prompt's completion; a prompt that failed has `error` instead."""

    index: int
    text: str | None = None
    finish_reason: str | None = None
    error: ErrorDetail | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class BulkCompletionResponse(CompletionResponse):
    """A completion of a list `prompt` placed one by one: each prompt's `n` choices at
    `prompt index * n + choice`, a failed prompt's with an error, usage summed."""

    choices: list[BulkCompletionChoice]  # type: ignore[assignment]
    usage: Usage


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
        description="running, starting, queued (a Slurm job waits), stopped (starts on the "
        "first request), failed, scaled_to_zero, unhealthy, not_deployed, or unknown when "
        "the site has not reported."
    )
    ready: bool = Field(description="A replica can answer now.")
    jobs: int | None = Field(
        None, description="Slurm jobs of the model queued or running at the site (Slurm sites)."
    )


class TribunalMembers(BaseModel):
    """The models a tribunal calls (each listed in /v1/models with its own state)."""

    generator: str
    critics: list[str]
    reviser: str
    rounds: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "first"
    sites: list[ModelPlacement] = Field(
        description="The sites that serve this model (none for a tribunal)."
    )
    tribunal: TribunalMembers | None = Field(
        None, description="Set for a tribunal: a workflow over other models, called by name."
    )
    capabilities: CapabilitiesConfig = Field(
        description="What the model can do, every field resolved: as its site config declares, "
        "else derived from its engine. When several sites serve the model, the first site's "
        "in the federation file's order (under /sites/{site}, that site's); a tribunal "
        "answers chat only."
    )
    alias_of: str | None = Field(
        None,
        description="Set for an alias (the federation's `aliases`): the model or tribunal it "
        "names, whose sites and capabilities it shows. A request naming the alias runs there "
        "and its answer names the alias.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SiteHealthReport(BaseModel):
    name: str
    health: Literal["unknown", "up", "stale", "down"]
    circuit: Literal["closed", "open", "half-open"]
    in_flight: int = Field(description="Requests this gateway replica has open at the site.")
    report_age_s: float | None = Field(description="Seconds since the last status report.")
    latency_s: dict[str, float] = Field(
        description="Recent time to first byte at this site, per model it has served."
    )
    error: str | None = Field(description="Why the last status call failed, if it did.")


class HealthReport(BaseModel):
    status: Literal["ok", "degraded", "no_sites"]
    sites: list[SiteHealthReport]


class ScrapeTargetGroup(BaseModel):
    """One entry of Prometheus's HTTP service discovery: a site's Ray nodes."""

    targets: list[str]
    labels: dict[str, str]


class CallerLimits(BaseModel):
    """The caller's limits; null: unlimited."""

    requests_per_s: float | None
    tokens_per_min: int | None
    model_tokens_per_min: dict[str, int | None] = Field(
        description="Tokens per minute of each model the caller may use, all users together."
    )


class WhoAmI(BaseModel):
    """The caller as the gateway sees them."""

    user: str
    credential: Literal["api-key", "globus", "anonymous"]
    identity_id: str | None = None
    name: str | None = None
    email: str | None = None
    identity_provider: str | None = None
    key_id: str | None = None
    groups: list[str]
    models: list[str] = Field(description="The models this caller may use.")
    limits: CallerLimits | None = Field(description="null: the gateway sets no limits.")
