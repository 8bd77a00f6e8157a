"""The least a forwarding proxy can be: uvicorn + one pooled httpx client, nothing else.

The gateway benchmark's yardstick for the standalone gateway (the target: at
most 1.5 times this one's added latency). No auth, validation, placement,
metering or metrics: read the body, post it to the backend, return the
answer. `python -m bench.bare_forwarder --port P --backend URL`.
"""

from __future__ import annotations

import argparse

import httpx
import uvicorn


def build_app(backend: str):
    client = httpx.AsyncClient(
        base_url=backend, timeout=60, limits=httpx.Limits(max_connections=None)
    )

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = await client.post(
            scope["path"], content=body, headers={"content-type": "application/json"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.content})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="Base URL of the backend.")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.backend),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
