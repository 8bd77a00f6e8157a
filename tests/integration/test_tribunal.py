"""Tribunals (generate, critique by a panel, revise) called as chat models through the
official client, on the federation's sites (tests/integration/conftest.py, TRIBUNALS)."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import TRIBUNALS, gateway_like

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Why do research centres federate their GPUs?"}]
STEPS_OF_ONE_ROUND = [
    ("generate", 0, "sim-even"),
    ("critique", 1, "sim-skew"),
    ("critique", 1, "sim-even"),
    ("revise", 1, "sim-fast"),
]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat_requests(url: str) -> float:
    """Chat completions the gateway has sent to any site, every model (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "first_requests"
        for sample in family.samples
        if sample.name == "first_requests_total"
        and sample.labels["route"] == "/v1/chat/completions"
    )


def summed(trace: list[dict]) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {key: sum(step["usage"][key] for step in trace) for key in keys}


def test_a_tribunal_is_listed_as_a_model_with_its_members(federation):
    models = {m.id: m for m in client(federation.gateway_url).models.list()}
    assert {t["name"] for t in TRIBUNALS} <= set(models)
    card = models["panel"].model_dump()
    assert card["tribunal"] == {
        "generator": "sim-even",
        "critics": ["sim-skew", "sim-even"],
        "reviser": "sim-fast",
        "rounds": 1,
    }
    assert card["sites"] == []
    one = httpx.get(f"{federation.gateway_url}/v1/models/panel", timeout=10).json()
    assert one["tribunal"]["critics"] == ["sim-skew", "sim-even"]
    pinned = httpx.get(f"{federation.gateway_url}/sites/east/v1/models", timeout=10).json()
    assert "panel" not in {m["id"] for m in pinned["data"]}  # a tribunal spans sites


def test_the_panel_critiques_at_once_between_generate_and_revise(federation):
    answer = client(federation.gateway_url).chat.completions.create(
        model="panel", messages=QUESTION, max_tokens=6, extra_body={"first_trace": True}
    )
    assert answer.model == "panel" and answer.object == "chat.completion"
    trace = answer.model_extra["first_trace"]
    assert [(s["step"], s["round"], s["model"]) for s in trace] == STEPS_OF_ONE_ROUND
    assert all(s["site"] in ("east", "west") and s["content"] for s in trace), trace
    generate, critic_a, critic_b, revise = trace

    def end(step: dict) -> float:
        return step["started_at"] + step["duration_s"]

    # The panel ran concurrently: each critique began before the other ended.
    assert critic_a["started_at"] < end(critic_b) and critic_b["started_at"] < end(critic_a)
    assert end(generate) <= min(critic_a["started_at"], critic_b["started_at"])
    assert revise["started_at"] >= max(end(critic_a), end(critic_b))
    assert answer.choices[0].message.content == revise["content"]
    assert answer.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    ) == summed(trace)
    assert critic_a["usage"]["completion_tokens"] == 8  # the tribunal's critic_max_tokens
    assert revise["usage"]["completion_tokens"] == 6  # the caller's max_tokens


def test_rounds_repeat_critique_and_revise_and_the_trace_is_only_sent_when_asked(federation):
    answer = client(federation.gateway_url).chat.completions.create(
        model="panel-twice", messages=QUESTION, max_tokens=4, extra_body={"first_trace": True}
    )
    steps = [(s["step"], s["round"], s["model"]) for s in answer.model_extra["first_trace"]]
    assert steps == [
        ("generate", 0, "sim-fast"),
        ("critique", 1, "sim-even"),
        ("critique", 1, "sim-skew"),
        ("revise", 1, "sim-even"),
        ("critique", 2, "sim-even"),
        ("critique", 2, "sim-skew"),
        ("revise", 2, "sim-even"),
    ]
    plain = client(federation.gateway_url).chat.completions.create(
        model="panel-twice", messages=QUESTION, max_tokens=4
    )
    assert plain.model_extra.get("first_trace") is None
    assert plain.usage.total_tokens == answer.usage.total_tokens  # the same seven steps


def test_a_streamed_tribunal_arrives_whole_through_the_official_client(federation):
    chunks = list(
        client(federation.gateway_url).chat.completions.create(
            model="panel",
            messages=QUESTION,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"first_trace": True},
        )
    )
    assert {c.model for c in chunks} == {"panel"} and len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    trace = chunks[-1].model_extra["first_trace"]
    assert [(s["step"], s["round"], s["model"]) for s in trace] == STEPS_OF_ONE_ROUND
    assert text == trace[-1]["content"] and len(text.split()) == 6
    assert chunks[-1].usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    ) == summed(trace)


def test_the_early_steps_of_a_stream_send_keep_alive_comments(federation, tmp_path):
    west = federation.sites["west"]  # sim-late's; test_federation.py leaves it stopped
    if west.process is None or not west.process.running:
        west.start()
        west.wait_ready()
    keepalive = {"gateway": {"stream_keepalive_s": 0.5}}
    with gateway_like(federation, tmp_path, "tribunal-kept", keepalive) as (_, url):
        body = {"model": "panel-late", "messages": QUESTION, "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line]
    first = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert first >= 4, lines  # sim-late's 3 s to a first token, a comment every 0.5 s
    assert set(lines[:first]) == {": keep-alive"}, lines
    assert lines[-1] == "data: [DONE]"
    assert all('"model":"panel-late"' in line for line in lines[first:-1]), lines


def test_a_critic_no_site_can_serve_is_a_503_before_any_call(federation):
    url = federation.gateway_url
    before = chat_requests(url)
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="panel-ghost", messages=QUESTION, max_tokens=4)
    assert caught.value.status_code == 503
    error = caught.value.body
    assert "'panel-ghost' cannot run" in error["message"] and "sim-ghost" in error["message"]
    assert error["type"] == "server_error", error
    assert chat_requests(url) == before  # not one step was sent


@pytest.mark.parametrize(
    ("change", "param"),
    [({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"n": 2}, "n")],
    ids=["tools", "n"],
)
def test_what_a_tribunal_cannot_do_is_a_400(federation, change, param):
    body = {"model": "panel", "messages": QUESTION, **change}
    response = httpx.post(f"{federation.gateway_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
