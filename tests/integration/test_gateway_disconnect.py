"""A client that goes away cancels its request at the site, on both hosts.

The simulated model would generate for about 15 s; the client leaves after
the first chunks (or a 1 s timeout). The gateway must let go of the site at
once: it records the request as 499 (client gone) in the usage ledger, and
its count of requests in flight (on /health) drops to zero, within
seconds, not when generation would have ended. Under Serve the
proxy cancels the ingress handler; standalone, the gateway watches for the
disconnect itself.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import INSIDERS, MEMBERS, SIMULATED_MODEL, records_of

pytestmark = pytest.mark.slow
LONG = {
    "model": SIMULATED_MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story"}],
    "max_tokens": 1500,  # 50 ms + 1500 x 10 ms on sim-llama
}


@pytest.fixture(params=["serve", "standalone"])
def gateway_url(request) -> str:
    if request.param == "serve":
        return request.getfixturevalue("stack").gateway_url
    return request.getfixturevalue("standalone_gateway")


@pytest.fixture
def caller(stack) -> tuple[str, dict[str, str]]:
    """A user of its own, so the test finds its request in the usage ledger."""
    user = f"leaver-{uuid.uuid4().hex[:8]}"
    return user, {"authorization": f"Bearer {stack.key(user, [MEMBERS, INSIDERS])}"}


def in_flight(url: str) -> int:
    report = httpx.get(f"{url}/health", timeout=10).json()
    return sum(site["in_flight"] for site in report["sites"])


def assert_released(stack, url: str, user: str) -> None:
    """The gateway let go of the request: it wrote its outcome, 499 (client gone), to the
    ledger from the same `finally` that closes the site connection. Under Serve the
    proxy routes /health to the idle replica, so in-flight counts are read standalone only."""
    (record,) = records_of(stack.store_path, user, 1, timeout_s=5)
    assert record.status == 499
    if url != stack.gateway_url:
        assert in_flight(url) == 0


def test_a_stream_the_client_abandons_is_released_at_the_site(stack, gateway_url, caller):
    user, auth = caller
    with (
        httpx.Client(base_url=gateway_url, timeout=30, headers=auth) as client,
        client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for _ in range(3):
            next(lines)
    assert_released(stack, gateway_url, user)


def test_a_request_the_client_times_out_on_is_released_at_the_site(stack, gateway_url, caller):
    user, auth = caller
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway_url}/v1/chat/completions", json=LONG, headers=auth, timeout=3)
    assert_released(stack, gateway_url, user)
