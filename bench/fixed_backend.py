"""A site that answers instantly: one canned chat completion, for measuring the hop itself.

The gateway benchmark puts it behind the gateway (and behind LiteLLM) to find
what one hop costs when the backend costs nearly nothing, as the hop costs in
the gateway issue were measured. A raw ASGI app under uvicorn (uvloop and
httptools), so the backend is never the bottleneck on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import uvicorn

MODEL = "sim-zero"
COMPLETION_TOKENS = 16


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fixed",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * COMPLETION_TOKENS},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": 8,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": 8 + COMPLETION_TOKENS,
            },
        }
    ).encode()


COMPLETION = _completion()
MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
).encode()


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = MODELS if scope["method"] == "GET" else COMPLETION
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
