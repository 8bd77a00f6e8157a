"""Usage read from answers on their way through, and the usage chunk dropped when unasked."""

import asyncio
import json

from serve_app.usage.metering import Meter


def sse(chunk: dict) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
EVENTS = [
    sse({"choices": [{"index": 0, "delta": {"content": "a"}}]}),
    sse({"choices": [{"index": 0, "delta": {"content": "b"}}], "usage": None}),
    sse({"choices": [], "usage": USAGE}),
    b"data: [DONE]\n\n",
]


def run(meter: Meter, chunks: list[bytes]) -> bytes:
    async def source():
        for chunk in chunks:
            yield chunk

    async def collect() -> bytes:
        return b"".join([c async for c in meter.metered(source())])

    return asyncio.run(collect())


def test_stream_usage_is_read_and_passed_on_when_asked():
    meter = Meter("m", usage_requested=True)
    assert run(meter, EVENTS) == b"".join(EVENTS)
    assert (meter.prompt_tokens, meter.completion_tokens) == (7, 3)


def test_stream_usage_chunk_is_dropped_when_not_asked():
    meter = Meter("m", usage_requested=False)
    out = run(meter, EVENTS)
    assert out == EVENTS[0] + EVENTS[1] + EVENTS[3]
    assert meter.total_tokens == 10


def test_events_split_across_chunks_are_reassembled():
    whole = b"".join(EVENTS)
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    meter = Meter("m", usage_requested=False, keep_content=True)
    assert run(meter, pieces) == EVENTS[0] + EVENTS[1] + EVENTS[3]
    assert meter.total_tokens == 10
    assert meter.completion == "ab"


def test_plain_answer_usage_and_done_is_heard_once():
    heard = []
    meter = Meter("m", on_done=heard.append)
    meter.read_body(json.dumps({"choices": [], "usage": USAGE}).encode())
    meter.finish(200)
    meter.finish(502)
    assert heard == [meter] and meter.status == 200 and meter.total_tokens == 10


def test_answers_without_usage_or_json_count_nothing():
    meter = Meter("m")
    meter.read_body(b"not json")
    meter.read_body(b'{"usage": "odd"}')
    assert meter.total_tokens == 0
