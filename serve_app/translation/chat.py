"""What both translations share of chat: the request they end in, checked as the chat route
checks its own, and the parts of a chat answer they read."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from deployments.openai_errors import describe_request_errors
from serve_app.errors import InvalidRequestError
from serve_app.protocol import ChatCompletionRequest
from serve_app.sse import named_event


def checked_chat_request(fields: dict[str, Any], source: str) -> ChatCompletionRequest:
    """`fields` as a chat request; one a site could not take is the caller's 400, such as
    a request whose `source` field (`input`, `messages`) leaves nothing for the model once
    translated (reasoning items alone)."""
    if not fields.get("messages"):
        raise InvalidRequestError(
            f"Invalid request: {source}: nothing for the model to answer (no message, "
            "function call or tool result).",
            param=source,
        )
    try:
        return ChatCompletionRequest(**fields)
    except ValidationError as exc:
        message, param, _ = describe_request_errors(list(exc.errors()))
        raise InvalidRequestError(message, param=param) from None


def first_choice(answer: dict) -> tuple[dict, dict]:
    """A chat answer's first choice and its message (empty when the site sent none)."""
    choice = (answer.get("choices") or [{}])[0]
    return choice, choice.get("message") or {}


def reasoning_of(message: dict) -> str | None:
    """A message's (or a delta's) reasoning, under either name vLLM has given it."""
    return message.get("reasoning_content") or message.get("reasoning")


def vendor_event(kind: type[BaseModel], **fields: Any) -> bytes:
    """An SSE event of the vendor's event type `kind`, named by its `type` literal (which
    both APIs repeat as the event's name)."""
    name = kind.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    event = kind.model_validate({**fields, "type": name})
    return named_event(name, event.model_dump_json(exclude_none=True))
