"""Anthropic's Messages API on chat completions: the request, the answer, the event stream.

Pure functions and one stateful translator, no I/O. A `MessagesRequest`
becomes a `ChatCompletionRequest` (`chat_request`): `system` a system
message; each message's blocks chat messages (an assistant's `tool_use`
blocks its `tool_calls`, a user's `tool_result` blocks `tool` messages ahead
of the rest of that turn); `tools`, `tool_choice` (`any` is chat's
`required`), `stop_sequences`, `max_tokens`. The chat answer becomes an
`anthropic.types.Message` (`message_from_chat`), and a chat stream the event
sequence the `anthropic` SDK assembles (`MessageStream`). The request model
is ours (the SDK's request types are TypedDicts of every block Anthropic
serves, and most cannot be served on chat): a block a chat model cannot take
is a 400 naming it.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from anthropic.types import (
    Message,
    MessageTokensCount,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from pydantic import BaseModel, Field, model_validator

from serve_app.errors import InvalidRequestError, anthropic_error_body
from serve_app.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    ImageURLPart,
    MediaURL,
    OpenAIModel,
    StreamOptions,
    TextPart,
    ToolCall,
)
from serve_app.sse import named_event
from serve_app.translation.chat import (
    checked_chat_request,
    first_choice,
    reasoning_of,
    vendor_event,
)

ROUTE = "/v1/messages"
COUNT_TOKENS_ROUTE = "/v1/messages/count_tokens"

# -- the request ------------------------------------------------------------


class TextBlock(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageSource(OpenAIModel):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _has_image(self) -> ImageSource:
        if self.type == "base64" and not (self.data and self.media_type):
            raise ValueError("a base64 image needs `media_type` and `data`")
        if self.type == "url" and not self.url:
            raise ValueError("a url image needs `url`")
        return self

    def url_for_chat(self) -> str:
        return self.url if self.type == "url" else f"data:{self.media_type};base64,{self.data}"  # type: ignore[return-value]


class ImageBlock(OpenAIModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(OpenAIModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(OpenAIModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(OpenAIModel):
    """An earlier turn's thinking, as clients send it back: kept, not shown to the model."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(OpenAIModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(OpenAIModel):
    type: Literal["custom"] | None = Field(
        None, description="Client tools only: Anthropic's server tools do not run here."
    )
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class AnthropicToolChoice(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_named(self) -> AnthropicToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool choice of type tool needs `name`")
        return self


class Metadata(OpenAIModel):
    user_id: str | None = None


class CountTokensRequest(OpenAIModel):
    """`POST /v1/messages/count_tokens`: the prompt of a Messages request."""

    model: str = Field(min_length=1, description="Model id, as listed by GET /v1/models.")
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`: what a chat model can serve of it; unknown fields are ignored."""

    max_tokens: int = Field(ge=1, description="Required, as in Anthropic's API.")
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    metadata: Metadata | None = None


# -- request to chat --------------------------------------------------------


def chat_request(request: CountTokensRequest) -> ChatCompletionRequest:
    """The chat completion that serves `request` (a count_tokens request: its prompt)."""
    messages = [ChatMessage(role="system", content=_system(request.system))]
    if not request.system:
        messages = []
    for index, message in enumerate(request.messages):
        messages += _chat_messages(message, index)
    fields: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.tools:
        fields["tools"] = [_chat_tool(tool) for tool in request.tools]
    if (choice := request.tool_choice) is not None:
        fields["tool_choice"] = _chat_tool_choice(choice)
        if choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    if isinstance(request, MessagesRequest):
        fields |= {
            "max_tokens": request.max_tokens,
            "stop": request.stop_sequences or None,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "user": request.metadata.user_id if request.metadata else None,
        }
        if request.top_k is not None:
            fields["top_k"] = request.top_k  # vLLM's sampling field
        if request.stream:
            fields |= {"stream": True, "stream_options": StreamOptions(include_usage=True)}
    return checked_chat_request(fields, "messages")


def _system(system: str | list[TextBlock] | None) -> str:
    if isinstance(system, list):
        return "\n\n".join(block.text for block in system)
    return system or ""


def _chat_tool(tool: AnthropicTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: AnthropicToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _chat_messages(message: MessageParam, index: int) -> list[ChatMessage]:
    """One Anthropic message as chat messages: an assistant turn is one message with its
    tool calls; a user turn's tool results are `tool` messages, then its other blocks."""
    if isinstance(message.content, str):
        return [ChatMessage(role=message.role, content=message.content)]
    blocks = message.content
    if message.role == "assistant":
        text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
        calls = [
            ToolCall(
                id=b.id,
                type="function",
                function=FunctionCall(name=b.name, arguments=json.dumps(b.input)),
            )
            for b in blocks
            if isinstance(b, ToolUseBlock)
        ]
        return [ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)]
    if any(isinstance(b, ToolUseBlock) for b in blocks):
        raise InvalidRequestError(
            f"Invalid request: messages.{index}.content: tool_use blocks belong to "
            "assistant messages.",
            param=f"messages.{index}.content",
        )
    out = [
        ChatMessage(role="tool", tool_call_id=b.tool_use_id, content=_result_text(b))
        for b in blocks
        if isinstance(b, ToolResultBlock)
    ]
    parts: list[Any] = [
        TextPart(type="text", text=b.text)
        if isinstance(b, TextBlock)
        else ImageURLPart(type="image_url", image_url=MediaURL(url=b.source.url_for_chat()))
        for b in blocks
        if isinstance(b, TextBlock | ImageBlock)
    ]
    if parts:
        only_text = all(isinstance(p, TextPart) for p in parts)
        content = "".join(p.text for p in parts) if only_text else parts
        out.append(ChatMessage(role="user", content=content))
    return out


def _result_text(block: ToolResultBlock) -> str:
    if isinstance(block.content, list):
        text = "".join(b.text for b in block.content if isinstance(b, TextBlock))
    else:
        text = block.content or ""
    return f"Error: {text}" if block.is_error else text


# -- chat answer to message -------------------------------------------------


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


class Turn(BaseModel):
    id: str
    request: MessagesRequest


def message_from_chat(turn: Turn, answer: dict) -> Message:
    """A chat completion's answer (its first choice) as the turn's message."""
    choice, message = first_choice(answer)
    content: list[dict] = []
    if thinking := reasoning_of(message):
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(_tool_use(call.get("id"), function.get("name"), function.get("arguments")))
    stop_reason, stop_sequence = _stop(turn.request, choice, bool(message.get("tool_calls")))
    return Message.model_validate(
        {
            "id": turn.id,
            "type": "message",
            "role": "assistant",
            "model": turn.request.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": _usage(answer.get("usage") or {}),
        }
    )


def _tool_use(call_id: str | None, name: str | None, arguments: str | None) -> dict:
    return {
        "type": "tool_use",
        "id": call_id or f"toolu_{secrets.token_hex(12)}",
        "name": name or "",
        "input": _tool_input(arguments),
    }


def _tool_input(arguments: str | None) -> dict:
    """A chat call's arguments as a tool_use `input`; text a model wrote that is not a
    JSON object is kept whole under `arguments`, not dropped."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


def _stop(request: MessagesRequest, choice: dict, called: bool) -> tuple[str, str | None]:
    """Anthropic's `stop_reason` (and `stop_sequence`) for a chat choice's finish; `called`:
    the answer holds tool calls (vLLM finishes a call forced by name with `stop`)."""
    reason = choice.get("finish_reason")
    if reason == "length":
        return "max_tokens", None
    if reason == "tool_calls" or called:
        return "tool_use", None
    matched = choice.get("stop_reason")  # vLLM names the stop string that ended it
    if isinstance(matched, str) and matched in (request.stop_sequences or []):
        return "stop_sequence", matched
    return "end_turn", None


def _usage(usage: dict) -> dict:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return {
        "input_tokens": usage.get("prompt_tokens") or 0,
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
    }


def token_count(answer: dict) -> MessageTokensCount:
    """count_tokens's answer: the prompt tokens the model's own tokenizer and chat template
    counted for the prompt (a one-token completion of it)."""
    return MessageTokensCount(input_tokens=(answer.get("usage") or {}).get("prompt_tokens") or 0)


# -- the event stream -------------------------------------------------------


class MessageStream:
    """A chat stream's chunks as the Messages API's events, in the SDK's own event types.

    `start` gives `message_start`; `take` one chunk's events (a content block
    opens with its first delta and closes when another kind begins); `finish`
    closes the open block, then `message_delta` (stop reason, usage) and
    `message_stop`; `fail` ends the stream with Anthropic's `error` event.
    """

    def __init__(self, turn: Turn):
        self.turn = turn
        self.blocks = 0  # content blocks opened
        self.open: str | None = None  # "thinking", "text" or "call<i>"
        self.opened: set[str] = set()
        self.usage: dict = {}
        self.choice: dict = {}

    _event = staticmethod(vendor_event)

    def start(self) -> list[bytes]:
        message = {
            "id": self.turn.id,
            "type": "message",
            "role": "assistant",
            "model": self.turn.request.model,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [self._event(RawMessageStartEvent, message=message)]

    def take(self, chunk: dict) -> list[bytes]:
        events: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if thinking := reasoning_of(delta):
                events += self._open(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
                events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
            if delta.get("content"):
                events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self.choice = choice
        return events

    def _open(self, kind: str, block: dict) -> list[bytes]:
        if self.open == kind:
            return []
        events = self._close()
        self.open = kind
        self.opened.add(kind)
        events.append(
            self._event(RawContentBlockStartEvent, index=self.blocks, content_block=block)
        )
        self.blocks += 1
        return events

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._event(RawContentBlockStopEvent, index=self.blocks - 1)]

    def _delta(self, delta: dict) -> bytes:
        return self._event(RawContentBlockDeltaEvent, index=self.blocks - 1, delta=delta)

    def _call_delta(self, call: dict) -> list[bytes]:
        function = call.get("function") or {}
        kind = f"call{call.get('index', 0)}"
        events: list[bytes] = []
        if self.open != kind:
            block = {**_tool_use(call.get("id"), function.get("name"), None), "input": {}}
            events += self._open(kind, block)
        if arguments := function.get("arguments"):
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def finish(self) -> list[bytes]:
        called = any(kind.startswith("call") for kind in self.opened)
        stop_reason, stop_sequence = _stop(self.turn.request, self.choice, called)
        usage = _usage(self.usage)
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        return [
            *self._close(),
            self._event(RawMessageDeltaEvent, delta=delta, usage=usage),
            self._event(RawMessageStopEvent),
        ]

    @staticmethod
    def fail(error: dict) -> list[bytes]:
        """An OpenAI error object as Anthropic's `error` event, the stream's last."""
        message = str(error.get("message") or "The request failed.")
        status = _STATUS_OF_TYPE.get(str(error.get("type")), 500)
        return [named_event("error", json.dumps(anthropic_error_body(status, message)))]


# The HTTP status an OpenAI error `type` stands for (a stream's error carries no status).
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "rate_limit_error": 429,
}
