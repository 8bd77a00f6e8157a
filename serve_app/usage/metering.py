"""Reading a request's usage out of the site's answer as it passes through.

Plain answers carry `usage` in their JSON body. Streams carry it only when
asked (`stream_options.include_usage`), in one last chunk with no choices:
the gateway always asks, so every stream can be metered, and drops that
chunk again when the client did not ask for it. The stream is otherwise
passed on byte for byte; only events that mention usage are parsed (and
all of them when the ledger keeps completions).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

_USAGE = b'"usage"'
_NO_USAGE = (b'"usage":null', b'"usage": null')


@dataclass
class Meter:
    """What one request used, filled in by the forwarder; `on_done` hears it once."""

    model: str
    usage_requested: bool = True
    keep_content: bool = False
    on_done: Callable[[Meter], None] | None = None
    site: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What the limits took for it at admission, settled when it ends: tokens reserved,
    # and whether it holds one of its caller's places in flight.
    reserved_tokens: int = 0
    holds_place: bool = False
    completion_parts: list[str] = field(default_factory=list)
    # When a stream's first event arrived (monotonic): its time to first token.
    first_byte_at: float | None = None
    _finished: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def completion(self) -> str | None:
        return "".join(self.completion_parts) if self.keep_content else None

    def finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.status = status
        if self.on_done is not None:
            self.on_done(self)

    def read_body(self, content: bytes) -> None:
        """The usage (and, if kept, the text) of a whole JSON answer."""
        if _USAGE not in content and not self.keep_content:
            return
        try:
            answer = json.loads(content)
        except ValueError:
            return
        if isinstance(answer, dict):
            self._take_usage(answer.get("usage"))
            if self.keep_content:
                self._take_text(answer.get("choices"), "message")

    async def metered(self, chunks: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """The stream as the client should get it, usage noted on the way; closing it
        closes `chunks`, so that the site's side is released at once."""
        pending = b""
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if not pending and chunk.endswith(b"\n\n") and _USAGE not in chunk:
                    if self.keep_content:
                        self._read_events(chunk)
                    yield chunk  # the common case: one whole event per chunk
                    continue
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n\n")
                if complete:
                    kept = self._read_events(complete + b"\n\n")
                    if kept:
                        yield kept
        if pending:
            yield pending

    def _read_events(self, events: bytes) -> bytes:
        """Note usage in whole SSE events; return them minus an unasked-for usage chunk."""
        kept = []
        for event in events.split(b"\n\n")[:-1]:
            if (_USAGE in event and not any(n in event for n in _NO_USAGE)) or self.keep_content:
                chunk = _event_json(event)
                if chunk is not None:
                    self._take_usage(chunk.get("usage"))
                    if self.keep_content:
                        self._take_text(chunk.get("choices"), "delta")
                    if not self.usage_requested and chunk.get("usage") and not chunk.get("choices"):
                        continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _take_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def _take_text(self, choices: object, key: str) -> None:
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            text = choice.get("text")
            if text is None and isinstance(choice.get(key), dict):
                text = choice[key].get("content")
            if isinstance(text, str):
                self.completion_parts.append(text)


def _event_json(event: bytes) -> dict | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return None
            try:
                chunk = json.loads(payload)
            except ValueError:
                return None
            return chunk if isinstance(chunk, dict) else None
    return None
