"""OpenAI's Responses API on chat completions: the request, the answer, the event stream.

Pure functions and one stateful translator, no I/O. A `ResponseCreateRequest`
becomes a `ChatCompletionRequest` (`chat_request`): `instructions` a system
message, the stored conversation of `previous_response_id` next, then the
`input` items (messages, function calls as the assistant's `tool_calls`,
their outputs as `tool` messages). The chat answer becomes an
`openai.types.responses.Response` (`response_from_chat`), and a chat stream,
chunk by chunk, the Responses event sequence the official SDK reads
(`ResponseStream`). The request model is ours: the SDK's input type is a
TypedDict union of every item OpenAI has (200 KB of JSON schema, hundreds of
errors for one bad item), while only these items can be served on chat;
everything else is a 400 that names the item. The output is the SDK's.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from serve_app.errors import InvalidRequestError
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
from serve_app.translation.chat import (
    checked_chat_request,
    first_choice,
    reasoning_of,
    vendor_event,
)

ROUTE = "/v1/responses"

# -- the request ------------------------------------------------------------


class InputText(OpenAIModel):
    type: Literal["input_text"]
    text: str


class OutputText(OpenAIModel):
    type: Literal["output_text"]
    text: str


class InputImage(OpenAIModel):
    type: Literal["input_image"]
    image_url: str = Field(
        min_length=1, description="The image's URL or data URL (file ids are not served)."
    )
    detail: str | None = None


class Refusal(OpenAIModel):
    type: Literal["refusal"]
    refusal: str


Content = Annotated[InputText | OutputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Content]
    id: str | None = None


class FunctionCallItem(OpenAIModel):
    """A call the model made in an earlier turn, sent back with its output."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Content]
    id: str | None = None


class ReasoningItem(OpenAIModel):
    """An earlier turn's reasoning, as agents send it back: kept, not shown to the model."""

    type: Literal["reasoning"]
    id: str | None = None


def _item_type(value: Any) -> str:
    """An item's `type`; a message may leave it out (OpenAI's "easy input message")."""
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(
        _item_type,
        custom_error_type="invalid_item",
        custom_error_message="an input item's type is message, function_call, "
        "function_call_output or reasoning (other items are not served on chat models)",
    ),
]


class FunctionTool(OpenAIModel):
    type: Literal["function"] = Field(description="Only function tools are served.")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(OpenAIModel):
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _schema_named(self) -> TextFormat:
        if self.type == "json_schema" and (self.json_schema is None or not self.name):
            raise ValueError("a json_schema format needs `name` and `schema`")
        return self


class TextConfig(OpenAIModel):
    format: TextFormat | None = None


class ReasoningConfig(OpenAIModel):
    effort: str | None = None


class ResponseCreateRequest(OpenAIModel):
    """`POST /v1/responses`: what a chat model can serve of it; unknown fields are ignored."""

    model: str = Field(min_length=1, description="Model id, as listed by GET /v1/models.")
    input: str | Annotated[list[InputItem], Field(min_length=1)] = Field(
        description="Text (one user message) or items: messages, function calls and outputs."
    )
    instructions: str | None = Field(None, description="A system message for this turn only.")
    previous_response_id: str | None = Field(
        None, description="Continue a stored response's conversation (on any site)."
    )
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    text: TextConfig | None = Field(None, description="`format`: text, json_schema, json_object.")
    reasoning: ReasoningConfig | None = Field(
        None, description="`effort` goes to models with reasoning; others ignore it."
    )
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = Field(None, description="Keep the response (default true).")
    stream: bool | None = None
    user: str | None = None


# -- request to chat --------------------------------------------------------


def chat_request(
    request: ResponseCreateRequest, conversation: list[ChatMessage], reasoning: bool
) -> ChatCompletionRequest:
    """The chat completion that serves `request`: its instructions, then `conversation` (the
    stored one of `previous_response_id` and this input); `reasoning`: the model reasons,
    so `reasoning.effort` goes on."""
    system = [ChatMessage(role="system", content=request.instructions)]
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": [*system, *conversation] if request.instructions else conversation,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
    }
    if request.tools:
        fields["tools"] = [_chat_tool(tool) for tool in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        fields["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    if request.text and request.text.format and request.text.format.type != "text":
        fields["response_format"] = _response_format(request.text.format)
    if reasoning and request.reasoning and request.reasoning.effort:
        fields["reasoning_effort"] = request.reasoning.effort
    if request.stream:
        fields |= {"stream": True, "stream_options": StreamOptions(include_usage=True)}
    return checked_chat_request(fields, "input")


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = tool.model_dump(include={"name", "description", "parameters", "strict"})
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _response_format(text_format: TextFormat) -> dict[str, Any]:
    if text_format.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": text_format.name, "schema": text_format.json_schema}
    if text_format.strict is not None:
        schema["strict"] = text_format.strict
    if text_format.description:
        schema["description"] = text_format.description
    return {"type": "json_schema", "json_schema": schema}


def input_messages(value: str | list[Any]) -> list[ChatMessage]:
    """The `input` as chat messages: a function call joins the assistant message before it
    (one assistant turn in chat), a function call's output is a `tool` message."""
    if isinstance(value, str):
        return [ChatMessage(role="user", content=value)]
    messages: list[ChatMessage] = []
    for index, item in enumerate(value):
        if isinstance(item, MessageItem):
            messages.append(_chat_message(item, index))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(
                id=item.call_id,
                type="function",
                function=FunctionCall(name=item.name, arguments=item.arguments),
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            content = item.output if isinstance(item.output, str) else _text(item.output)
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=content))
    return messages


def _chat_message(item: MessageItem, index: int) -> ChatMessage:
    # Chat templates know `system`; OpenAI's newer `developer` means the same to them.
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return ChatMessage(role=role, content=item.content)
    if not any(isinstance(part, InputImage) for part in item.content):
        return ChatMessage(role=role, content=_text(item.content))
    if role != "user":
        raise InvalidRequestError(
            f"Invalid request: input[{index}].content: only user messages may hold images.",
            param=f"input[{index}].content",
        )
    parts: list[Any] = [
        ImageURLPart(type="image_url", image_url=MediaURL(url=part.image_url))
        if isinstance(part, InputImage)
        else TextPart(type="text", text=_part_text(part))
        for part in item.content
    ]
    return ChatMessage(role=role, content=parts)


def _part_text(part: Any) -> str:
    return part.refusal if isinstance(part, Refusal) else getattr(part, "text", "")


def _text(parts: list[Any]) -> str:
    return "".join(_part_text(part) for part in parts if not isinstance(part, InputImage))


# -- chat answer to response ------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class Turn(BaseModel):
    """What one response is: its id and time, and the request it answers."""

    id: str
    created_at: float
    request: ResponseCreateRequest


def response_from_chat(turn: Turn, answer: dict) -> Response:
    """A chat completion's answer (its first choice) as the turn's response."""
    choice, message = first_choice(answer)
    output: list[dict] = []
    if reasoning := reasoning_of(message):
        output.append(_reasoning_item(new_id("rs"), reasoning, "completed"))
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"], "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            _call_item(new_id("fc"), call.get("id") or new_id("call"), function, "completed")
        )
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return build_response(turn, status, output, answer.get("usage"))


def build_response(
    turn: Turn,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    error: dict | None = None,
) -> Response:
    """The Response object of `turn` in `status`, with the request's settings echoed."""
    request = turn.request
    text_format = request.text.format if request.text and request.text.format else None
    tool_choice = request.tool_choice or "auto"
    fields: dict[str, Any] = {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "model": request.model,
        "status": status,
        "output": output,
        "instructions": request.instructions,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or []],
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "store": request.store is not False,
        "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True)}
        if text_format
        else {"format": {"type": "text"}},
        "usage": _usage(usage) if usage else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
    }
    return Response.model_validate(fields)


def _usage(usage: dict) -> ResponseUsage:
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return ResponseUsage.model_validate(
        {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens") or prompt + completion,
        }
    )


def _message_item(item_id: str, text: str, status: str) -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def _call_item(item_id: str, call_id: str, function: dict, status: str) -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def _reasoning_item(item_id: str, text: str, status: str) -> dict:
    content = [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


# -- the stored conversation -----------------------------------------------


def output_messages(response: Response) -> list[ChatMessage]:
    """The response's output as the chat messages a next turn continues from."""
    text = "".join(
        part.text
        for item in response.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )
    calls = [
        ToolCall(
            id=item.call_id,
            type="function",
            function=FunctionCall(name=item.name, arguments=item.arguments),
        )
        for item in response.output
        if item.type == "function_call"
    ]
    if not text and not calls:
        return []
    return [ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)]


def input_items(value: str | list[Any]) -> list[dict]:
    """The request's input as the items `GET /v1/responses/{id}/input_items` lists, each with
    an id: text is one user message, a message's text its content parts."""
    if isinstance(value, str):
        value = [MessageItem(role="user", content=value)]
    items = []
    for item in value:
        data = item.model_dump(by_alias=True, exclude_none=True)
        if isinstance(item, MessageItem):
            kind = "output_text" if item.role == "assistant" else "input_text"
            if isinstance(item.content, str):
                data["content"] = [{"type": kind, "text": item.content}]
            if item.role == "assistant":
                for part in data["content"]:
                    part.setdefault("annotations", [])
            data["status"] = "completed"
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
        data.setdefault("id", new_id(prefix.get(data["type"], "item")))
        items.append(data)
    return items


# -- the event stream -------------------------------------------------------


class ResponseStream:
    """A chat stream's chunks as the Responses API's events, in the SDK's own event types.

    `start` gives `response.created` and `response.in_progress`; `take` one
    chunk's events (an output item opens with its first delta, a function call
    closes the text before it); `finish` closes what is open and completes the
    response (`response.incomplete` when it ran out of tokens); `fail` ends it
    with `error` and `response.failed`. `response` is the last state, to store.
    """

    def __init__(self, turn: Turn):
        self.turn = turn
        self.sequence = 0
        self.output: list[dict] = []
        self.open: dict[str, int] = {}  # "reasoning" / "message": its output index
        self.calls: dict[int, int] = {}  # chat tool-call index: its output index
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.response: Response | None = None

    def _event(self, kind: type[BaseModel], **fields: Any) -> bytes:
        self.sequence += 1
        return vendor_event(kind, **fields, sequence_number=self.sequence - 1)

    def start(self) -> list[bytes]:
        response = build_response(self.turn, "in_progress", [])
        return [
            self._event(ResponseCreatedEvent, response=response),
            self._event(ResponseInProgressEvent, response=response),
        ]

    def take(self, chunk: dict) -> list[bytes]:
        events: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if reasoning := reasoning_of(delta):
                events += self._text_delta("reasoning", reasoning)
            if delta.get("content"):
                events += self._text_delta("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if kind not in self.open:
            if kind == "message":
                events += self._close("reasoning")
            item = (_reasoning_item if kind == "reasoning" else _message_item)(
                new_id("rs" if kind == "reasoning" else "msg"), "", "in_progress"
            )
            events += self._add(kind, item)
        index = self.open[kind]
        item = self.output[index]
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        item["content"][0]["text"] += text
        if kind == "reasoning":
            return [*events, self._reasoning_delta(common, text)]
        delta = self._event(
            ResponseTextDeltaEvent,
            **common,
            delta=text,
            logprobs=[],
        )
        return [*events, delta]

    def _reasoning_delta(self, common: dict, text: str) -> bytes:
        return self._event(
            ResponseReasoningTextDeltaEvent,
            **common,
            delta=text,
        )

    def _add(self, kind: str, item: dict) -> list[bytes]:
        index = len(self.output)
        self.output.append(item)
        self.open[kind] = index
        # Added empty: the content part comes in its own event (clients append it).
        added = {**item, "content": []} if "content" in item else item
        events = [
            self._event(
                ResponseOutputItemAddedEvent,
                item=added,
                output_index=index,
            )
        ]
        if kind in ("message", "reasoning"):
            events.append(
                self._event(
                    ResponseContentPartAddedEvent,
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=item["content"][0],
                )
            )
        return events

    def _call_delta(self, call: dict) -> list[bytes]:
        events: list[bytes] = []
        function = call.get("function") or {}
        position = call.get("index", 0)
        if position not in self.calls:
            events += self._close("reasoning") + self._close("message")
            for kind in [k for k in self.open if k.startswith("call")]:
                events += self._close(kind)
            item = _call_item(new_id("fc"), call.get("id") or new_id("call"), function, "")
            item["status"], item["arguments"] = "in_progress", ""
            events += self._add(f"call{position}", item)
            self.calls[position] = self.open[f"call{position}"]
        index = self.calls[position]
        item = self.output[index]
        if arguments := function.get("arguments"):
            item["arguments"] += arguments
            events.append(
                self._event(
                    ResponseFunctionCallArgumentsDeltaEvent,
                    item_id=item["id"],
                    output_index=index,
                    delta=arguments,
                )
            )
        return events

    def _close(self, kind: str) -> list[bytes]:
        """The done events of the open item `kind`, if one is open."""
        if kind not in self.open:
            return []
        index = self.open.pop(kind)
        item = self.output[index]
        item["status"] = "completed"
        events: list[bytes] = []
        if item["type"] == "function_call":
            events.append(
                self._event(
                    ResponseFunctionCallArgumentsDoneEvent,
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        else:
            events += self._part_done(item, index)
        events.append(
            self._event(
                ResponseOutputItemDoneEvent,
                item=item,
                output_index=index,
            )
        )
        return events

    def _part_done(self, item: dict, index: int) -> list[bytes]:
        part = item["content"][0]
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if item["type"] == "reasoning":
            done = self._event(
                ResponseReasoningTextDoneEvent,
                **common,
                text=part["text"],
            )
        else:
            done = self._event(
                ResponseTextDoneEvent,
                **common,
                text=part["text"],
                logprobs=[],
            )
        part_done = self._event(ResponseContentPartDoneEvent, **common, part=part)
        return [done, part_done]

    def finish(self) -> list[bytes]:
        events: list[bytes] = []
        for kind in list(self.open):
            events += self._close(kind)
        if self.finish_reason == "length":
            self.response = build_response(self.turn, "incomplete", self.output, self.usage)
            kind = ResponseIncompleteEvent
        else:
            self.response = build_response(self.turn, "completed", self.output, self.usage)
            kind = ResponseCompletedEvent
        return [*events, self._event(kind, response=self.response)]

    def fail(self, error: dict) -> list[bytes]:
        """`error` (OpenAI's error object) ends the stream: `error`, then `response.failed`."""
        message = str(error.get("message") or "The response failed.")
        code = _failure_code(error.get("type"))
        self.response = build_response(
            self.turn, "failed", self.output, self.usage, {"code": code, "message": message}
        )
        return [
            self._event(
                ResponseErrorEvent,
                code=code,
                message=message,
                param=error.get("param"),
            ),
            self._event(ResponseFailedEvent, response=self.response),
        ]


def _failure_code(kind: Any) -> str:
    """The closest of the codes a failed response may carry (the SDK's list) to an OpenAI
    error `type`."""
    if kind == "rate_limit_error":
        return "rate_limit_exceeded"
    if kind in ("invalid_request_error", "authentication_error", "permission_error"):
        return "invalid_prompt"
    return "server_error"
