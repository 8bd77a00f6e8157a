"""Bulk chat completions (`POST /v1/chat/completions/batch`, vLLM's shape) through the
gateway's request path: spread over the sites, one choice per conversation in order,
a failed conversation its own error, every item limited and in the ledger."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BURST_USER, INSIDERS, MEMBERS, SIMULATED_MODEL, records_of

pytestmark = pytest.mark.slow
BULK = "/v1/chat/completions/batch"
TOO_LONG = 17  # this conversation is over sim-even's 2,048-token context


def conversations(count: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(count)
    ]


def answered_by_site(url: str) -> dict[str, float]:
    """Chat completions of sim-even the gateway has answered, per site (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "first_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "first_requests_total"
                and labels["model"] == "sim-even"
                and labels["route"] == "/v1/chat/completions"
            ):
                counts[labels["site"]] = counts.get(labels["site"], 0) + sample.value
    return counts


def test_a_bulk_spreads_over_the_sites_and_answers_in_order(federation):
    url = federation.gateway_url
    messages = conversations(64)
    messages[TOO_LONG] = [{"role": "user", "content": "word " * 2100}]
    before = answered_by_site(url)
    response = httpx.post(
        f"{url}{BULK}",
        json={"model": "sim-even", "messages": messages, "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert [choice["index"] for choice in answer["choices"]] == list(range(64))
    failed = [choice for choice in answer["choices"] if choice.get("error")]
    assert [choice["index"] for choice in failed] == [TOO_LONG]
    assert "maximum context length" in failed[0]["error"]["message"]
    assert failed[0]["error"]["type"] == "invalid_request_error"
    assert set(failed[0]["error"]) == {"message", "type", "param", "code"}
    assert failed[0]["message"] is None
    served = [choice for choice in answer["choices"] if not choice.get("error")]
    assert all(choice["message"]["content"] for choice in served)
    assert answer["usage"]["completion_tokens"] == 8 * 63
    after = answered_by_site(url)
    grown = {site: after.get(site, 0) - before.get(site, 0) for site in ("east", "west")}
    assert all(count > 0 for count in grown.values()), grown  # both sites took some
    assert sum(grown.values()) == 64, grown


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"messages": conversations(513)}, 413, "/v1/batches"),
        ({"messages": conversations(2), "stream": True}, 400, "stream"),
        ({"messages": [[]]}, 400, "messages"),
        ({"messages": conversations(2), "model": "no-such-model"}, 404, "no-such-model"),
    ],
    ids=["over-max-items", "streamed", "empty-conversation", "unknown-model"],
)
def test_bad_bulks_are_refused_whole(federation, body, status, words):
    response = httpx.post(
        f"{federation.gateway_url}{BULK}", json={"model": "sim-even", **body}, timeout=30
    )
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert words in error["message"] + str(error["param"]), error


def test_every_item_is_limited_and_in_the_ledger(stack):
    """Items are requests: the burst user's 10 requests/s hold for a bulk of 40, and a
    bulk of 24 leaves 24 ledger rows."""
    body = {"model": SIMULATED_MODEL, "messages": conversations(40), "max_tokens": 2}
    with stack.http(stack.key(BURST_USER, [MEMBERS, INSIDERS])) as http:
        choices = http.post(BULK, json=body).json()["choices"]
    limited = [c for c in choices if c.get("error")]
    assert 10 <= len(choices) - len(limited) < 30, len(limited)
    assert {c["error"]["code"] for c in limited} == {"rate_limit_exceeded"}

    user = f"bulk-{uuid.uuid4().hex[:8]}"
    body["messages"] = conversations(24)
    with stack.http(stack.key(user, [MEMBERS, INSIDERS])) as http:
        answer = http.post(BULK, json=body).json()
    assert not any(c.get("error") for c in answer["choices"]), answer
    records = records_of(stack.store_path, user, 24)
    assert len(records) == 24 and {r.status for r in records} == {200}
    assert sum(r.completion_tokens for r in records) == answer["usage"]["completion_tokens"]
