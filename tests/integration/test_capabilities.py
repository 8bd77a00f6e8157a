"""Capabilities and aliases at the gateway, through the official client, on the federation's
sites (tests/integration/conftest.py: sim-embed, an embeddings-only model, and ALIASES)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.site_config import SiteConfig
from serve_app.routing.forwarding import SITE_HEADER
from serve_app.store import SqliteStore
from tests.integration.conftest import ALIASES, gateway_like
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def cards(url: str, prefix: str = "") -> dict[str, dict]:
    """The model cards of GET /v1/models (under `prefix`, e.g. /sites/east), by id."""
    listing = httpx.get(f"{url}{prefix}/v1/models", timeout=10).raise_for_status().json()
    return {card["id"]: card for card in listing["data"]}


def requests_of(url: str, model: str) -> Counter[tuple[str, str, str]]:
    """first_requests_total of `model` by (site, route, status), from the gateway's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples if family.name == "first_requests" else []:
            labels = sample.labels
            if sample.name == "first_requests_total" and labels["model"] == model:
                counts[labels["site"], labels["route"], labels["status"]] += sample.value
    return counts


def test_every_model_card_carries_the_capabilities_its_site_config_resolves(federation):
    expected: dict[str, dict] = {}
    for entry in federation.config["sites"]:  # in federation order: the first site's count
        for model in SiteConfig.model_validate(entry["site"]).models:
            expected.setdefault(model.id, model.resolved_capabilities().model_dump())
    listed = cards(federation.gateway_url)
    assert {model: listed[model]["capabilities"] for model in expected} == expected
    assert listed["sim-embed"]["capabilities"]["apis"] == ["embeddings"]
    assert listed["sim-fast"]["capabilities"] == {
        "context_window": 2048,
        "input_modalities": ["text"],
        "tool_calling": True,
        "reasoning": False,
        "apis": ["chat", "completions", "embeddings", "responses", "messages"],
    }
    assert listed["panel"]["capabilities"]["apis"] == ["chat"]  # a tribunal


def test_an_alias_is_listed_with_the_model_it_names(federation):
    url = federation.gateway_url
    listed = cards(url)
    alias, model = listed["sim-friendly"], listed["sim-fast"]
    assert alias["alias_of"] == "sim-fast" and model["alias_of"] is None
    assert [site["site"] for site in alias["sites"]] == ["east"]
    assert alias["capabilities"] == model["capabilities"]
    one = client(url).models.retrieve("sim-friendly")
    assert one.id == "sim-friendly" and one.model_extra["alias_of"] == "sim-fast"
    # Under a site only where its model is.
    assert "sim-friendly" in cards(url, "/sites/east")
    assert "sim-friendly" not in cards(url, "/sites/west")


def test_an_alias_answers_a_chat_completion_that_names_it(federation):
    url = federation.gateway_url
    raw = client(url).chat.completions.with_raw_response.create(
        model="sim-friendly", messages=HELLO, max_tokens=4
    )
    answer = raw.parse()
    assert answer.model == "sim-friendly" and answer.choices[0].message.content
    assert raw.headers[SITE_HEADER] == "east"
    # The ledger records the model that answered.
    request_id = raw.headers["x-request-id"]
    store = SqliteStore(Path(federation.config["store"]["path"]))

    def recorded():
        return next((r for r in store.usage() if r.request_id == request_id), None)

    record = eventually(recorded, 15, "the request's ledger record")
    assert (record.model, record.site, record.status) == ("sim-fast", "east", 200)


def test_an_alias_streams_every_chunk_under_its_name(federation):
    stream = client(federation.gateway_url).chat.completions.create(
        model="sim-friendly",
        messages=HELLO,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) > 2 and {chunk.model for chunk in chunks} == {"sim-friendly"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_an_embeddings_only_model_refuses_chat_before_any_site_is_called(federation):
    url = federation.gateway_url
    before = requests_of(url, "sim-embed")
    with pytest.raises(openai.BadRequestError) as refused:
        client(url).chat.completions.create(model="sim-embed", messages=HELLO, max_tokens=4)
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "unsupported_api", "model")
    assert error.body["message"] == (
        "The model 'sim-embed' does not support the chat API; it supports: embeddings."
    )
    after = requests_of(url, "sim-embed")
    assert after - before == Counter({("none", CHAT, "400"): 1})  # refused, no site called
    with pytest.raises(openai.BadRequestError, match="does not support the completions API"):
        client(url).completions.create(model="sim-embed", prompt="Hello", max_tokens=4)
    vectors = client(url).embeddings.create(model="sim-embed", input="Hello")
    assert vectors.data and vectors.data[0].embedding


def test_an_alias_of_a_tribunal_runs_the_tribunal(federation, tmp_path):
    aliases = {**ALIASES, "panel-friendly": "panel"}
    with gateway_like(federation, tmp_path, "aliased", {"aliases": aliases}) as (_, url):
        card = cards(url)["panel-friendly"]
        assert card["alias_of"] == "panel" and card["tribunal"]["reviser"] == "sim-fast"
        assert (card["sites"], card["capabilities"]["apis"]) == ([], ["chat"])
        assert "panel-friendly" not in cards(url, "/sites/east")  # a tribunal spans sites
        answer = client(url).chat.completions.create(
            model="panel-friendly", messages=HELLO, max_tokens=4, extra_body={"first_trace": True}
        )
        assert answer.model == "panel-friendly"
        steps = [step["step"] for step in answer.model_extra["first_trace"]]
        assert steps == ["generate", "critique", "critique", "revise"]
