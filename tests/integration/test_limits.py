"""Rate limits hold across the two replicas of the Serve gateway."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.conftest import BURST_RATE, BURST_USER, CAPPED_USER, INSIDERS, MEMBERS, SIMULATED_MODEL
from tests.support.waiting import eventually

ONE_TOKEN = {"model": SIMULATED_MODEL, "prompt": "hi", "max_tokens": 1}
BURST_SECONDS = 6.0


def test_a_burst_is_held_to_the_configured_rate_across_replicas(stack):
    key = stack.key(BURST_USER, [MEMBERS, INSIDERS])
    statuses: list[int] = []
    sent_at: list[float] = []
    retry_afters: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + BURST_SECONDS

    def send() -> None:
        with stack.http(key) as http:
            while (now := time.monotonic()) < stop_at:
                response = http.post("/v1/completions", json=ONE_TOKEN)
                with lock:
                    sent_at.append(now)
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        retry_afters.append(response.headers.get("retry-after", ""))
                        assert response.json()["error"]["code"] == "rate_limit_exceeded"

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window_s = max(sent_at) - min(sent_at)
    admitted = statuses.count(200)
    # A full bucket (one second's worth), then the rate, over the time requests were sent.
    expected = BURST_RATE + BURST_RATE * window_s
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > admitted, "the offered load was not over the limit"
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)
    assert retry_afters and all(int(r) >= 1 for r in retry_afters)


def test_tokens_per_minute_are_counted_after_the_request(stack):
    client = stack.client(stack.key(CAPPED_USER, [MEMBERS, INSIDERS]))
    first = client.completions.create(model=SIMULATED_MODEL, prompt="hello", max_tokens=50)
    assert first.usage.total_tokens > 40  # over the user's 40 tokens/min

    def refusal() -> openai.RateLimitError | None:
        try:
            client.completions.create(model=SIMULATED_MODEL, prompt="hello", max_tokens=1)
        except openai.RateLimitError as exc:
            return exc
        return None  # the token limit has not applied yet

    # The count reaches the limiter just after the answer.
    refused = eventually(refusal, 5, "the token limit to apply", interval_s=0.1)
    assert "tokens/min" in refused.body["message"]
    assert int(refused.response.headers["retry-after"]) >= 1


def test_limits_apply_per_user(stack):
    with httpx.Client(base_url=stack.gateway_url) as http:
        response = http.post(
            "/v1/completions",
            json=ONE_TOKEN,
            headers={"authorization": f"Bearer {stack.api_key}"},
        )
    assert response.status_code == 200


pytestmark = pytest.mark.slow
