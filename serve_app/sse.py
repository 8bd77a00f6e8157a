"""Server-sent events: the chat stream read event by event, and events written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

DONE = b"data: [DONE]"


async def sse_events(chunks: AsyncIterator[bytes | str]) -> AsyncIterator[bytes]:
    """The SSE events of a byte stream, whatever its chunking, without their blank line."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.encode() if isinstance(chunk, str) else chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            if event:
                yield event
    if buffer.strip():
        yield buffer


def event_data(event: bytes) -> dict | None:
    """An event's `data:` as a JSON object; None for a comment, `[DONE]` or anything else."""
    if not event.startswith(b"data:"):
        return None
    try:
        value = json.loads(event[len(b"data:") :])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def data_event(chunk: dict) -> bytes:
    """A chat-completions event: `data:` only."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def named_event(name: str, payload: str) -> bytes:
    """An event with its name (`event:` line), as the Responses and Messages APIs send them."""
    return f"event: {name}\ndata: {payload}\n\n".encode()
