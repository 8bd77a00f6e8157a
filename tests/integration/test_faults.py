"""The gateway under slow sites, hostile input and a shutdown mid-request.

Real sites (`first site up`, simulated engines; the federation fixture's
east and west), real gateways, real HTTP. sim-skew on west takes 200 ms to
its first token and 40 ms for each next one, so its answers are as slow as
a test needs: 300 tokens take about 12 s, longer than the fixture's
`read_s` (10 s) and shorter than its `first_byte_s` (30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import openai
import psutil
import pytest
import yaml

from deployments.site_functions import site_status
from deployments.site_status import SiteStatus
from tests.conftest import SIMULATED_MODEL, free_port, private_ray_temp
from tests.integration.conftest import gateway_like
from tests.support.processes import FirstProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Hello"}]
SLOW = "sim-skew"  # on west: 200 ms + 40 ms per token
LATE = "sim-late"  # on west: 3 s to the first token
CHAT = "/v1/chat/completions"


def post_raw(url: str, body: dict, timeout_s: float = 30) -> httpx.Response:
    """`body` as JSON with every non-ASCII character escaped, so a lone surrogate
    goes out as the escape `\\ud800` (valid JSON that no UTF-8 can carry)."""
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(url, content=content, headers=headers, timeout=timeout_s)


def unhandled_errors(log: Path, since: int) -> str:
    text = log.read_text(errors="replace")[since:]
    return "\n".join(line for line in text.splitlines() if "Traceback" in line or "ERROR" in line)


def test_strings_no_utf8_can_carry_get_400_naming_the_field(federation):
    url = federation.gateway_url
    log = federation.gateway.log_path
    since = len(log.read_text(errors="replace"))
    bad = "a\ud800b"
    call = {"id": "call-1", "type": "function", "function": {"name": "f", "arguments": bad}}
    cases = [
        (CHAT, {"messages": [{"role": "user", "content": bad}]}, "messages.0.content"),
        (
            CHAT,
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call-1", "content": "42"},
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        ("/v1/completions", {"prompt": bad}, "prompt"),
        ("/v1/completions", {"prompt": ["fine", bad]}, "prompt.1"),
    ]
    for path, fields, param in cases:
        response = post_raw(f"{url}{path}", {"model": "sim-fast", "max_tokens": 2, **fields})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == param, error
        assert error["type"] == "invalid_request_error"
        assert "surrogate" in error["message"]
    # The same requests in valid Unicode are served.
    fine = post_raw(f"{url}{CHAT}", {"model": "sim-fast", "max_tokens": 2, "messages": HELLO})
    assert fine.status_code == 200, fine.text
    assert unhandled_errors(log, since) == ""


def _streamed_body(size: int):
    """`size` bytes of a JSON body, sent chunked: no Content-Length to refuse it by."""
    yield b'{"model": "sim-fast", "messages": [{"role": "user", "content": "'
    for _ in range(size // 2**20):
        yield b"x" * 2**20
    yield b'"}]}'


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe{not utf-8", 400),
        (b'{"model": "sim-fast", "messages": [', 400),
        (b"[" * 10_000 + b"]" * 10_000, 400),
        (json.dumps({"model": "sim-fast", "messages": HELLO * 100_000}).encode(), 400),
        (json.dumps({"model": "sim-fast", "messages": HELLO, "n": 10**6}).encode(), 400),
        (json.dumps({"model": "sim-fast", "messages": HELLO, "max_tokens": -1}).encode(), 400),
        (b"x" * (64 * 2**20), 413),
        (None, 413),  # 64 MB, chunked
    ],
    ids=[
        "not-utf8",
        "cut-json",
        "nested",
        "100k-messages",
        "absurd-n",
        "negative-max-tokens",
        "64MB",
        "64MB-chunked",
    ],
)
def test_hostile_bodies_get_4xx_in_the_openai_shape(federation, body, status):
    log = federation.gateway.log_path
    since = len(log.read_text(errors="replace"))
    content = _streamed_body(64 * 2**20) if body is None else body
    response = httpx.post(
        f"{federation.gateway_url}{CHAT}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert unhandled_errors(log, since) == ""


def test_64_mb_bodies_leave_the_gateways_memory_flat(federation):
    """Refused at the 16 MB limit, before (Content-Length) or while (chunked) it is read:
    after a first round, which may leave its buffers to the allocator, five more rounds
    add nothing that grows with them."""
    gateway = psutil.Process(federation.gateway.process.pid)

    def send_both() -> None:
        for content in (b"x" * (64 * 2**20), _streamed_body(64 * 2**20)):
            response = httpx.post(
                f"{federation.gateway_url}{CHAT}",
                content=content,
                headers={"content-type": "application/json"},
                timeout=60,
            )
            assert response.status_code == 413, response.text[:300]

    send_both()
    before = gateway.memory_info().rss
    for _ in range(5):
        send_both()
    grown_mib = (gateway.memory_info().rss - before) / 2**20
    assert grown_mib < 16, f"the gateway grew {grown_mib:.1f} MiB over 640 MB of bodies"


def test_an_absurd_max_tokens_is_held_to_the_context_as_vllm_does(federation):
    """vLLM caps max_tokens at what the context leaves (no 400); the gateway passes it on,
    reserving no more than a token bucket holds."""
    body = {"model": "sim-fast", "messages": HELLO, "max_tokens": 10**15}
    response = httpx.post(f"{federation.gateway_url}{CHAT}", json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 2048  # the whole context


def test_a_non_streaming_answer_slower_than_read_s_is_awaited(federation):
    """read_s bounds the silence between chunks of a started answer, not the wait for
    the headers: a non-streaming answer sends them only once it is generated."""
    started = time.monotonic()
    response = httpx.post(
        f"{federation.gateway_url}/sites/west{CHAT}",
        json={"model": SLOW, "messages": HELLO, "max_tokens": 300},
        timeout=60,
    )
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 300
    assert took > federation.config["sites"][0]["timeouts"]["read_s"], took


@pytest.fixture
def impatient_gateway(federation, tmp_path):
    """A second gateway in front of the same sites that waits only 2 s for an answer to
    start, opens a site's circuit at its first failure, waits 1 s for a request's
    headers, and keeps a waiting stream alive every 0.5 s."""
    changes = {
        "circuit_breaker": {"failure_threshold": 1, "open_s": 60},
        "gateway": {"header_timeout_s": 1, "stream_keepalive_s": 0.5},
    }
    with gateway_like(
        federation, tmp_path, "impatient", changes, {"timeouts": {"first_byte_s": 2}}
    ) as (_, url):
        yield url


def test_a_site_that_has_the_request_but_is_slow_is_neither_failed_nor_retried(
    impatient_gateway,
):
    url = impatient_gateway
    body = {"model": SLOW, "messages": HELLO, "max_tokens": 100}  # about 4 s on west
    for _ in range(2):
        started = time.monotonic()
        response = httpx.post(f"{url}/sites/west{CHAT}", json=body, timeout=30)
        assert response.status_code == 504, response.text
        assert "did not start its answer within 2 s" in response.json()["error"]["message"]
        assert time.monotonic() - started < 4
    sites = {s["name"]: s for s in httpx.get(f"{url}/health", timeout=10).json()["sites"]}
    assert sites["west"]["circuit"] == "closed", sites["west"]
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    retried = [line for line in metrics.splitlines() if line.startswith("first_site_retries")]
    assert retried == [], retried


def test_connections_that_never_finish_their_headers_are_closed(impatient_gateway):
    url = impatient_gateway
    address = httpx.URL(url)
    opened = time.monotonic()
    idle = [socket.create_connection((address.host, address.port)) for _ in range(100)]
    partial = [socket.create_connection((address.host, address.port)) for _ in range(100)]
    for connection in partial:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    trickle = socket.create_connection((address.host, address.port))
    trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        # Meanwhile a normal request is answered.
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        # A byte every 0.3 s (each would reset a keep-alive timer) until the gateway hangs up.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() < opened + 10:
                trickle.sendall(b"x")
                time.sleep(0.3)
        for connection in [*idle, *partial, trickle]:
            connection.settimeout(max(opened + 10 - time.monotonic(), 0.1))
            with contextlib.suppress(ConnectionResetError):
                assert connection.recv(1024) == b""  # closed by the gateway
    finally:
        for connection in [*idle, *partial, trickle]:
            connection.close()


def test_500_half_open_connections_do_not_hold_up_the_gateway_on_serve(stack):
    """Serve's proxy has no header timeout to set (the standalone gateway's is above), but
    connections that never finish their request must not keep others from an answer."""
    address = httpx.URL(stack.gateway_url)
    held = [socket.create_connection((address.host, address.port)) for _ in range(500)]
    try:
        for connection in held[250:]:
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        with stack.http() as http:
            body = {"model": SIMULATED_MODEL, "messages": HELLO, "max_tokens": 4}
            assert http.post(CHAT, json=body).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for connection in held:
            connection.close()


def test_a_stream_waiting_for_its_first_token_is_kept_alive(federation, tmp_path):
    keepalive = {"gateway": {"stream_keepalive_s": 0.5}}
    with gateway_like(federation, tmp_path, "kept", keepalive) as (_, url):
        body = {"model": LATE, "messages": HELLO, "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{url}/sites/west{CHAT}", json=body, timeout=60) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line]
        first = next(i for i, line in enumerate(lines) if line.startswith("data: "))
        assert first >= 4, lines  # 3 s of waiting, a comment every 0.5 s
        assert set(lines[:first]) == {": keep-alive"}, lines
        assert lines[-1] == "data: [DONE]"
        # The official client skips the comments.
        client = openai.OpenAI(base_url=f"{url}/sites/west/v1", api_key="unused", max_retries=0)
        chunks = client.chat.completions.create(
            model=LATE, messages=HELLO, max_tokens=5, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 5
        # A stream that starts at once has no comment before its first event.
        quick = {**body, "model": "sim-fast"}
        with httpx.stream("POST", f"{url}{CHAT}", json=quick, timeout=60) as stream:
            assert next(stream.iter_lines()).startswith("data: ")


def test_a_refusal_after_the_keep_alive_began_is_the_streams_one_event(impatient_gateway):
    url = impatient_gateway
    client = openai.OpenAI(base_url=f"{url}/sites/west/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for _chunk in client.chat.completions.create(
            model=LATE, messages=HELLO, max_tokens=5, stream=True
        ):
            pass
    assert "did not start its answer within 2 s" in caught.value.message
    assert time.monotonic() - started < 3


def test_a_flood_past_a_sites_bound_gets_fast_503s_and_nothing_else_fails(federation, tmp_path):
    body = {"model": SLOW, "messages": HELLO, "max_tokens": 50}  # about 2 s on west
    bounded = gateway_like(federation, tmp_path, "bounded", {}, {"max_in_flight": 4})
    with bounded as (_, url):

        def send(_: int) -> tuple[int, float, str, httpx.Headers]:
            started = time.monotonic()
            response = httpx.post(f"{url}/sites/west{CHAT}", json=body, timeout=60)
            took = time.monotonic() - started
            return response.status_code, took, response.text, response.headers

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(send, range(32)))
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(served) + len(refused) == 32, [r[0] for r in results]
        assert 4 <= len(served) < 32, len(served)
        assert all(took < 1.5 for _, took, _, _ in refused), sorted(r[1] for r in refused)
        error = json.loads(refused[0][2])["error"]
        assert "full (4 requests in flight)" in error["message"], error
        # A place frees as soon as one answer ends: come back in a second, not ten.
        assert {headers.get("retry-after") for _, _, _, headers in refused} == {"1"}
        # Once they are done, the site takes requests again.
        assert httpx.post(f"{url}/sites/west{CHAT}", json=body, timeout=60).status_code == 200


def test_a_full_site_refuses_at_once_and_is_not_counted_as_failed(federation):
    """sim-narrow holds 2 requests and queues 2 in Serve: the rest are refused by the
    site in the OpenAI shape with Retry-After, and the gateway passes that on as a
    fast 503 without opening the site's circuit (threshold 2 here)."""
    body = {"model": "sim-narrow", "messages": HELLO, "max_tokens": 4}
    site_url = f"http://127.0.0.1:{federation.sites['west'].config['serve']['port']}"

    def send(url: str) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        response = httpx.post(f"{url}{CHAT}", json=body, timeout=60)
        return response.status_code, time.monotonic() - started, response

    for url in (site_url, federation.gateway_url):
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, [url] * 12))
        statuses = sorted(status for status, _, _ in results)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, (url, statuses)
        refused = [(took, response) for status, took, response in results if status == 503]
        assert max(took for took, _ in refused) < 1.5, (url, [t for t, _ in refused])
        expected = "at capacity on this site" if url == site_url else "(west: full)"
        for _, response in refused:
            assert response.headers["retry-after"] == "2", (url, response.headers)
            # Each refusal, not only the first: had "full" counted as failing, the
            # circuit would be open after two, and the rest would say so.
            assert expected in response.json()["error"]["message"], (url, response.text)
    # The site was full, not broken: its circuit stays closed and it answers at once.
    status, took, _ = send(federation.gateway_url)
    assert status == 200 and took < 5, (status, took)


def site_ongoing(federation, model: str) -> dict[str, float]:
    """Requests inside `model`'s replicas at east and west, from Serve's own gauges."""
    ongoing = {}
    for name in ("east", "west"):
        status = SiteStatus.model_validate(site_status(federation.sites[name].config))
        ongoing[name] = next(m.ongoing_requests for m in status.models if m.id == model)
    return ongoing


def test_200_clients_leaving_mid_stream_leave_nothing_running(federation):
    """Each stream would run for most of a minute (2,000 tokens at 64 sequences a site); its client
    reads the first event, or waits 5 s for one, and goes. The gateway's in-flight counts
    and the sites' own count of requests inside their replicas fall back to zero: the
    requests were cancelled at the sites, not left to run out."""
    url = federation.gateway_url
    body = {"model": "sim-even", "messages": HELLO, "max_tokens": 2000, "stream": True}

    async def leave_early(session: aiohttp.ClientSession) -> bool:
        """Whether the stream had begun when its client left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5), session.post(f"{url}{CHAT}", json=body) as stream:
                async for line in stream.content:
                    if line.startswith(b"data: "):
                        return True
        return False

    async def clients() -> list[bool]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(leave_early(session) for _ in range(200)))

    began = sum(asyncio.run(clients()))
    assert began >= 64, began  # the sites had taken them: there was something to cancel

    def in_flight() -> int:
        report = httpx.get(f"{url}/health", timeout=10).json()
        return sum(site["in_flight"] for site in report["sites"])

    eventually(lambda: in_flight() == 0, 10, "no request in flight at the gateway")
    eventually(
        lambda: not any(site_ongoing(federation, "sim-even").values()),
        30,
        "no sim-even request inside a replica at east or west",
        interval_s=1,
    )


def drain_and_check(process: FirstProcess, url: str, grace_s: float) -> None:
    """SIGTERM `process` while a stream of about 4 s is in flight: the stream ends whole,
    new requests are turned away meanwhile, and the process exits 0 within the grace."""
    body = {"model": SLOW, "messages": HELLO, "max_tokens": 100, "stream": True}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/sites/west{CHAT}", json=body) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "chat.completion.chunk" in first
        process.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        def turned_away() -> bool:
            # Standalone: uvicorn no longer listens. On Serve: the proxy still does,
            # but the gateway's application is gone from its routes.
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code != 200
            except httpx.TransportError:
                return True

        eventually(turned_away, 5, "the gateway to turn new requests away", interval_s=0.1)
        rest = list(lines)
    events = [line for line in rest if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events[-3:]
    assert not any('"error"' in line for line in events), events[-3:]
    try:
        status = process.process.wait(timeout=grace_s + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace_s + 30} s after SIGTERM")
    assert status == 0, process.log_path.read_text()[-2000:]
    assert time.monotonic() - signalled < grace_s + 30


def test_sigterm_drains_the_standalone_gateway(federation, tmp_path):
    grace = {"gateway": {"shutdown_grace_s": 30}}
    with gateway_like(federation, tmp_path, "drained", grace) as (gateway, url):
        drain_and_check(gateway, url, 30)


def test_sigterm_drains_the_gateway_on_serve(federation, tmp_path):
    """`first gateway up` on its own Ray cluster, in front of the same sites."""
    config = copy.deepcopy(federation.config)
    config["store"] = {"path": str(tmp_path / "first.db")}
    ray_temp = private_ray_temp()
    config["gateway"] = {
        "port": free_port(),
        "shutdown_grace_s": 30,
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "ray": {
            "num_cpus": 4,
            "dashboard_port": free_port(),
            "metrics_export_port": free_port(),
            "temp_dir": str(ray_temp),
        },
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = FirstProcess.start(["gateway", "up", "--config", str(path)], tmp_path, "serve")
    try:
        url = gateway.wait_ready(300)
        drain_and_check(gateway, url, 30)
        assert "gateway drained in" in gateway.log_path.read_text()
    finally:
        gateway.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)
