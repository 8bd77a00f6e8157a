"""A client that goes away cancels its request at the site, on both hosts.

The simulated model would generate for about 15 s; the client leaves after
the first chunks (or a 1 s timeout). The gateway must let go of the site at
once: its own count of requests in flight there (on /health) drops to zero
within seconds, not when generation would have ended. Under Serve the
proxy cancels the ingress handler; standalone, the gateway watches for the
disconnect itself.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SIMULATED_MODEL

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
def auth(stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.api_key}"}


def in_flight(url: str, samples: int = 12) -> int:
    """Requests the gateway holds. Each Serve replica counts its own and the proxy picks
    a replica per call, so ask several times and take the largest answer."""
    counts = []
    for _ in range(samples):
        report = httpx.get(f"{url}/health", timeout=10).json()
        counts.append(sum(site["in_flight"] for site in report["sites"]))
    return max(counts)


def wait_for_no_requests_in_flight(url: str, timeout_s: float) -> float:
    started = time.monotonic()
    while in_flight(url):
        assert time.monotonic() - started < timeout_s, "the gateway still holds the request"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_stream_the_client_abandons_is_released_at_the_site(gateway_url, auth):
    assert in_flight(gateway_url) == 0
    with (
        httpx.Client(base_url=gateway_url, timeout=30, headers=auth) as client,
        client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for _ in range(3):
            next(lines)
        assert in_flight(gateway_url) == 1
    wait_for_no_requests_in_flight(gateway_url, timeout_s=5)


def test_a_request_the_client_times_out_on_is_released_at_the_site(gateway_url, auth):
    assert in_flight(gateway_url) == 0
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            httpx.post, f"{gateway_url}/v1/chat/completions", json=LONG, headers=auth, timeout=3
        )
        deadline = time.monotonic() + 3
        while in_flight(gateway_url) != 1:
            assert time.monotonic() < deadline, "the request never reached the site"
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):
            answer.result()
    wait_for_no_requests_in_flight(gateway_url, timeout_s=5)
