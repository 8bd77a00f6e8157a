"""The gateway in front of several sites: placement, failover, failures mid-stream.

Real sites (`first site up`, each its own Ray cluster, simulated engines),
a real standalone gateway, real HTTP; the response header `x-first-site`
says which site answered.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from serve_app.routing.forwarding import SITE_HEADER
from tests.integration.conftest import gateway_like
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Hello"}]


def ask(url: str, model: str, max_tokens: int = 8, path: str = "/v1/chat/completions"):
    body = {"model": model, "messages": HELLO, "max_tokens": max_tokens}
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def served_by(url: str, model: str, requests: int, concurrency: int, max_tokens: int = 8):
    def one(_: int) -> str:
        response = ask(url, model, max_tokens)
        assert response.status_code == 200, response.text
        return response.headers[SITE_HEADER]

    with ThreadPoolExecutor(concurrency) as pool:
        return Counter(pool.map(one, range(requests)))


def health(url: str) -> dict[str, dict]:
    report = httpx.get(f"{url}/health", timeout=10).json()
    return {site["name"]: site for site in report["sites"]}


def wait_for_health(url: str, site: str, state: str, timeout_s: float) -> None:
    """Until the gateway's /health reports `site` as `state` (up, down)."""

    def reported() -> bool:
        report = health(url)[site]
        assert report["health"] == state, report
        return True

    what = f"{site} reported {state}"
    eventually(reported, timeout_s, what, interval_s=0.2, retry_on=(AssertionError,))


def test_a_site_down_at_start_is_reported_down_and_others_serve(federation):
    url = federation.gateway_url
    wait_for_health(url, "ghost", "down", 10)
    assert health(url)["ghost"]["error"]
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert {s["site"] for s in models["sim-even"]["sites"]} == {"east", "west", "ghost"}
    assert ask(url, "sim-even").status_code == 200


def test_a_model_no_healthy_site_serves_gets_503_with_retry_after(federation):
    url = federation.gateway_url
    wait_for_health(url, "ghost", "down", 10)
    response = ask(url, "sim-ghost")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "no_site_available" and "ghost is down" in error["message"]


def test_unknown_model_and_unknown_site_get_404(federation):
    url = federation.gateway_url
    unknown_model = ask(url, "no-such-model")
    assert unknown_model.status_code == 404
    assert unknown_model.json()["error"]["code"] == "model_not_found"
    unknown_site = ask(url, "sim-even", path="/sites/nowhere/v1/chat/completions")
    assert unknown_site.status_code == 404
    assert unknown_site.json()["error"]["code"] == "site_not_found"
    not_on_site = ask(url, "sim-fast", path="/sites/west/v1/chat/completions")
    assert not_on_site.status_code == 404


def test_pinned_requests_go_to_the_named_site(federation):
    url = federation.gateway_url
    for site in ("east", "west"):
        response = ask(url, "sim-even", path=f"/sites/{site}/v1/chat/completions")
        assert response.status_code == 200
        assert response.headers[SITE_HEADER] == site


def test_equal_sites_share_the_load_evenly(federation):
    counts = served_by(federation.gateway_url, "sim-even", requests=60, concurrency=6)
    assert set(counts) == {"east", "west"}
    assert 0.35 <= counts["east"] / 60 <= 0.65, counts


def test_a_gateway_is_ready_only_once_it_has_heard_from_its_sites(federation, tmp_path):
    """Else a burst in its first seconds goes to whichever site happened to report first."""
    with gateway_like(federation, tmp_path, "fresh", {}) as (_, url):
        sites = health(url)
        assert sites["east"]["health"] == sites["west"]["health"] == "up", sites
        counts = served_by(url, "sim-even", requests=24, concurrency=24)
        assert set(counts) == {"east", "west"}, counts


def test_most_traffic_goes_to_the_faster_site(federation):
    counts = served_by(
        federation.gateway_url, "sim-skew", requests=60, concurrency=6, max_tokens=16
    )
    assert counts["east"] >= 0.7 * 60, counts


def test_requests_fail_over_when_a_site_stops_and_return_when_it_is_back(federation):
    url = federation.gateway_url
    west = federation.sites["west"]
    wait_for_health(url, "west", "up", 30)
    west.stop()
    # Every request after the stop succeeds, on east.
    after_stop = served_by(url, "sim-even", requests=30, concurrency=3)
    assert after_stop == {"east": 30}
    wait_for_health(url, "west", "down", 10)
    west.start()
    west.wait_ready()
    wait_for_health(url, "west", "up", 30)
    returned = eventually(
        lambda: "west" in served_by(url, "sim-even", requests=12, concurrency=4),
        30,
        "traffic on west again",
        interval_s=0.2,
    )
    assert returned


def test_a_stream_cut_by_its_site_ends_with_an_error_event(federation):
    """Last in this file: it leaves west stopped."""
    url = federation.gateway_url
    west = federation.sites["west"]
    wait_for_health(url, "west", "up", 30)
    client = openai.OpenAI(base_url=f"{url}/sites/west/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="sim-even", messages=HELLO, max_tokens=2000, stream=True, timeout=60
    )
    received = 0
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for _chunk in stream:
            received += 1
            if received == 5:
                west.stop(grace_s=30)
    assert received >= 5
    assert "broke off the stream" in caught.value.message
    assert time.monotonic() - started < 40
