"""An answer to a request that named an alias names the alias, however the site chunked it."""

from __future__ import annotations

import asyncio
import json

from serve_app.routing.forwarding import _renamed, _renamed_body


def _event(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _stream(chunks: list[bytes], model: str) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    async def collect() -> list[bytes]:
        return [out async for out in _renamed(source(), model)]

    return asyncio.run(collect())


def test_every_streamed_chunk_names_the_alias_even_split_across_reads():
    first = _event({"id": "c", "model": "real", "choices": [{"delta": {"content": "a"}}]})
    usage = _event({"id": "c", "model": "real", "choices": [], "usage": {"total_tokens": 3}})
    whole = first + b": keep-alive\n\n" + usage + b"data: [DONE]\n\n"
    out = _stream([whole[:7], whole[7:40], whole[40:]], "friendly")
    assert len(out) == 4 and (out[1], out[3]) == (b": keep-alive\n\n", b"data: [DONE]\n\n")
    models = [json.loads(event[len(b"data: ") :])["model"] for event in (out[0], out[2])]
    assert models == ["friendly", "friendly"]
    assert json.loads(out[2][len(b"data: ") :])["usage"] == {"total_tokens": 3}


def test_an_error_event_passes_unchanged():
    error = _event({"error": {"message": "boom", "type": "api_error", "code": None}})
    assert _stream([error], "friendly") == [error]


def test_closing_the_renamed_stream_closes_the_sites():
    closed = []

    async def source():
        try:
            while True:
                yield _event({"model": "real", "choices": []})
        finally:
            closed.append(True)

    async def read_one() -> None:
        stream = _renamed(source(), "friendly")
        await anext(stream)
        await stream.aclose()

    asyncio.run(read_one())
    assert closed == [True]


def test_a_json_answer_names_the_alias_and_other_bodies_pass():
    body = json.dumps({"id": "c", "model": "real", "usage": {"total_tokens": 3}}).encode()
    assert json.loads(_renamed_body(body, "friendly")) == {
        "id": "c",
        "model": "friendly",
        "usage": {"total_tokens": 3},
    }
    assert _renamed_body(b"[1, 2]", "friendly") == b"[1, 2]"
    assert _renamed_body(b"not json", "friendly") == b"not json"
