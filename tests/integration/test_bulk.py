"""Bulk chat completions (`POST /v1/chat/completions/batch`, vLLM's shape) through the
gateway's request path: spread over the sites, one choice per conversation in order,
a failed conversation its own error, every item limited and in the ledger."""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BURST_USER, FIRST, INSIDERS, MEMBERS, SIMULATED_MODEL, records_of

pytestmark = pytest.mark.slow
BULK = "/v1/chat/completions/batch"
TOO_LONG = 17  # this conversation is over sim-even's 2,048-token context


def conversations(count: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(count)
    ]


def answered_by_site(url: str, route: str = "/v1/chat/completions") -> dict[str, float]:
    """Requests on `route` for sim-even the gateway has answered, per site (its /metrics)."""
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
                and labels["route"] == route
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


def grown_since(url: str, before: dict[str, float], route: str) -> dict[str, float]:
    after = answered_by_site(url, route)
    return {site: after.get(site, 0) - before.get(site, 0) for site in ("east", "west")}


def test_a_list_prompt_is_spread_and_each_prompts_choices_keep_their_place(federation):
    """OpenAI's numbering: prompt i's n choices at i * n ... i * n + n - 1."""
    url, route = federation.gateway_url, "/v1/completions"
    prompts = [f"Count to {i}:" for i in range(48)]  # enough to fill both sites
    prompts[5] = "word " * 2100  # over sim-even's context
    before = answered_by_site(url, route)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.completions.create(model="sim-even", prompt=prompts, max_tokens=3, n=2)
    assert [choice.index for choice in answer.choices] == list(range(96))
    failed = [c.index for c in answer.choices if c.model_extra.get("error")]
    assert failed == [10, 11], failed
    assert all(len(c.text.split()) == 3 for c in answer.choices if c.index not in failed)
    assert answer.usage.completion_tokens == 3 * 2 * 47
    grown = grown_since(url, before, route)
    assert all(count > 0 for count in grown.values()) and sum(grown.values()) == 48, grown
    # A stream goes to one site whole, as before: its choices interleave.
    before = answered_by_site(url, route)
    list(client.completions.create(model="sim-even", prompt=prompts[:2], max_tokens=3, stream=True))
    assert sum(grown_since(url, before, route).values()) == 1


def test_a_long_list_of_embedding_inputs_goes_out_in_slices_and_comes_back_in_order(federation):
    url, route = federation.gateway_url, "/v1/embeddings"
    texts = [f"document {i} about topic {i % 7}" for i in range(100)]  # 4 slices of 32 at most
    before = answered_by_site(url, route)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="sim-even", input=texts)
    assert [item.index for item in answer.data] == list(range(100))
    alone = client.embeddings.create(model="sim-even", input=texts[57]).data[0].embedding
    assert answer.data[57].embedding == alone  # each text's own vector, in its place
    assert answer.usage.prompt_tokens == sum(len(text.split()) for text in texts)
    assert sum(grown_since(url, before, route).values()) == 4 + 1


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


def test_first_bulk_answers_a_jsonl_file_in_order_and_fails_for_a_failed_conversation(
    federation, tmp_path
):
    lines = [json.dumps(messages) for messages in conversations(20)]
    lines[3] = json.dumps({"custom_id": "third", "messages": conversations(4)[3]})
    lines[TOO_LONG] = json.dumps([{"role": "user", "content": "word " * 2100}])
    source = tmp_path / "questions.jsonl"
    source.write_text("\n".join(lines) + "\n\n")  # a blank line is skipped
    out = tmp_path / "answers.jsonl"
    command = [FIRST, "bulk", str(source), "--model", "sim-even", "--max-tokens", "3"]
    command += ["--chunk", "8", "--out", str(out), "--url", federation.gateway_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().endswith(
        "Error: 1 of 20 conversations failed (their `error` is in the output)"
    ), done.stderr
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["index"] for a in answers] == list(range(20))
    assert answers[3]["custom_id"] == "third" and "custom_id" not in answers[4]
    assert "maximum context length" in answers[TOO_LONG]["error"]["message"]
    assert all(len(a["message"]["content"].split()) == 3 for a in answers if not a["error"])

    source.write_text("not json\n")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"{source}:1: not JSON" in done.stderr
