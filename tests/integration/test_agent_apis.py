"""The APIs agents speak, through the official SDKs, unchanged: OpenAI's Responses API and
Anthropic's Messages API, translated by the gateway onto the sites' chat completions.

On the shared stack (auth, limits, ledger; the vLLM tiny model and the simulated
sim-llama, which answers with a tool call when the prompt holds `[tool_call]`),
and on the simulated federation for a conversation that moves between sites.
"""

from __future__ import annotations

import json
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.conftest import (
    AGENT_USER,
    EMBEDDING_MODEL,
    INSIDERS,
    MEMBERS,
    SIMULATED_MODEL,
    VLLM_MODEL,
    records_of,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
ANTHROPIC_WEATHER = {
    "name": WEATHER["name"],
    "description": WEATHER["description"],
    "input_schema": WEATHER["parameters"],
}


def user_client(stack, prefix: str) -> tuple[str, openai.OpenAI]:
    user = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return user, stack.client(stack.key(user, [MEMBERS, INSIDERS]))


def anthropic_client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


# -- Responses ----------------------------------------------------------------


def test_a_response_is_answered_stored_listed_and_deleted(stack):
    user, client = user_client(stack, "responses")
    response = client.responses.create(
        model=VLLM_MODEL, input="Say hello", instructions="Be brief.", max_output_tokens=8
    )
    assert response.id.startswith("resp_")
    assert response.model == VLLM_MODEL
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    stored = client.responses.retrieve(response.id)
    assert stored.id == response.id and stored.output_text == response.output_text
    (item,) = client.responses.input_items.list(response.id).data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == "Say hello"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    (record,) = records_of(stack.store_path, user, 1)
    assert record.route == "/v1/responses" and record.status == 200
    assert record.prompt_tokens == response.usage.input_tokens
    assert record.completion_tokens == response.usage.output_tokens


def test_a_streamed_response_sends_every_event_the_sdk_reads(stack):
    _, client = user_client(stack, "responses")
    with client.responses.stream(model=SIMULATED_MODEL, input="Count") as stream:
        events = list(stream)
        final = stream.get_final_response()  # assembled by the SDK from the events
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4:-4] == ["response.output_text.delta"] * (len(kinds) - 8)
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and final.output_text == deltas and final.status == "completed"
    assert final.usage.output_tokens == len(kinds) - 8
    assert client.responses.retrieve(final.id).output_text == deltas


def test_a_streamed_response_cut_by_its_token_limit_ends_incomplete(stack):
    _, client = user_client(stack, "responses")
    stream = client.responses.create(
        model=VLLM_MODEL, input="Count", max_output_tokens=4, stream=True
    )
    events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert last.response.output_text == deltas
    assert last.response.usage.output_tokens == 4


def test_a_function_call_round_trip_through_responses(stack):
    _, client = user_client(stack, "responses")
    first = client.responses.create(
        model=SIMULATED_MODEL, input="Weather in Oslo? [tool_call]", tools=[WEATHER]
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "simulated", "days": 1}
    second = client.responses.create(
        model=SIMULATED_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]
    assert second.previous_response_id == first.id
    # The second turn's prompt held the first: its question, the call, and the output.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_a_streamed_function_call_gives_its_arguments_in_deltas(stack):
    _, client = user_client(stack, "responses")
    with client.responses.stream(
        model=SIMULATED_MODEL, input="Weather? [tool_call]", tools=[WEATHER], tool_choice="auto"
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(deltas) == json.loads(done.arguments) == {"city": "simulated", "days": 1}
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == done.arguments


def test_another_users_response_is_not_found(stack):
    _, owner = user_client(stack, "owner")
    _, other = user_client(stack, "other")
    response = owner.responses.create(model=SIMULATED_MODEL, input="mine", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as refused:
        other.responses.create(
            model=SIMULATED_MODEL, input="continue", previous_response_id=response.id
        )
    assert refused.value.body["param"] == "previous_response_id"
    assert owner.responses.retrieve(response.id).id == response.id  # not deleted by the other


def test_a_response_not_stored_cannot_be_continued_or_retrieved(stack):
    _, client = user_client(stack, "responses")
    response = client.responses.create(
        model=SIMULATED_MODEL, input="once", store=False, max_output_tokens=2
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_bad_responses_requests_are_openai_400s(stack):
    _, client = user_client(stack, "responses")
    with pytest.raises(openai.BadRequestError) as item:
        client.responses.create(model=SIMULATED_MODEL, input=[{"type": "web_search_call"}])
    assert item.value.body["param"] == "input.0"
    with pytest.raises(openai.BadRequestError) as tool:
        client.responses.create(model=SIMULATED_MODEL, input="hi", tools=[{"type": "web_search"}])
    assert tool.value.body["param"].startswith("tools.0")
    with pytest.raises(openai.BadRequestError) as embedder:
        client.responses.create(model=EMBEDDING_MODEL, input="hi")
    assert "embeddings" in embedder.value.body["message"]


def test_a_conversation_continues_on_another_site(federation):
    """The first turn at east, the second pinned to west: west sees the first turn."""
    url = federation.gateway_url
    east = openai.OpenAI(base_url=f"{url}/sites/east/v1", api_key="none", max_retries=0)
    west = openai.OpenAI(base_url=f"{url}/sites/west/v1", api_key="none", max_retries=0)
    first = east.responses.with_raw_response.create(
        model="sim-even", input="Remember the number seven.", max_output_tokens=8
    )
    assert first.headers["x-first-site"] == "east"
    first = first.parse()
    second = west.responses.with_raw_response.create(
        model="sim-even",
        input="Which number?",
        previous_response_id=first.id,
        max_output_tokens=8,
    )
    assert second.headers["x-first-site"] == "west"
    second = second.parse()
    alone = west.responses.create(model="sim-even", input="Which number?", max_output_tokens=8)
    carried = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens >= carried + alone.usage.input_tokens - 1
    # Unpinned, a stored response is found whichever site answers.
    anywhere = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    assert anywhere.responses.retrieve(second.id).previous_response_id == first.id


# -- Anthropic Messages ---------------------------------------------------------


def test_a_message_is_answered_through_the_anthropic_sdk(stack):
    user, _ = user_client(stack, "messages")
    client = anthropic_client(stack.gateway_url, stack.key(user, [MEMBERS, INSIDERS]))
    message = client.messages.create(
        model=VLLM_MODEL,
        max_tokens=6,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    assert message.id.startswith("msg_") and message.model == VLLM_MODEL
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    counted = client.messages.count_tokens(
        model=VLLM_MODEL, system="Be brief.", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert counted.input_tokens == message.usage.input_tokens
    records = records_of(stack.store_path, user, 2)
    assert {r.route for r in records} == {"/v1/messages", "/v1/messages/count_tokens"}
    (created,) = [r for r in records if r.route == "/v1/messages"]
    assert created.prompt_tokens == message.usage.input_tokens
    assert created.completion_tokens == message.usage.output_tokens


def test_a_streamed_message_is_assembled_by_the_sdk(stack):
    client = anthropic_client(stack.gateway_url, stack.api_key)
    with client.messages.stream(
        model=VLLM_MODEL, max_tokens=6, messages=[{"role": "user", "content": "Count"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts and final.content[0].text == "".join(texts)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_a_tool_use_round_trip_through_messages(stack):
    client = anthropic_client(stack.gateway_url, stack.api_key)
    question = {"role": "user", "content": "Weather in Oslo? [tool_call:get_weather]"}
    first = client.messages.create(
        model=SIMULATED_MODEL, max_tokens=32, tools=[ANTHROPIC_WEATHER], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "simulated", "days": 1}
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}
    with client.messages.stream(
        model=SIMULATED_MODEL,
        max_tokens=8,
        tools=[ANTHROPIC_WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [result]},
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.stop_reason == "max_tokens"


def test_a_streamed_tool_use_is_assembled_by_the_sdk(stack):
    client = anthropic_client(stack.gateway_url, stack.api_key)
    with client.messages.stream(
        model=SIMULATED_MODEL,
        max_tokens=32,
        tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        final = stream.get_final_message()
    (use,) = final.content
    assert use.type == "tool_use" and use.input == {"city": "simulated", "days": 1}
    assert final.stop_reason == "tool_use"


def test_messages_errors_are_in_anthropics_shape(stack):
    client = anthropic_client(stack.gateway_url, stack.api_key)
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
        missing = http.post(
            "/v1/messages",
            headers={"x-api-key": stack.api_key},
            json={"model": VLLM_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        unknown = http.post(
            "/v1/messages",
            headers={"x-api-key": "first-not-a-key"},
            json={"model": VLLM_MODEL, "max_tokens": 1, "messages": []},
        )
    assert missing.status_code == 400
    body = missing.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert unknown.status_code == 401
    assert unknown.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as model:
        client.messages.create(
            model="no-such-model", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    assert model.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as embedder:
        client.messages.create(
            model=EMBEDDING_MODEL, max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    assert "embeddings" in embedder.value.body["error"]["message"]


# -- limits ---------------------------------------------------------------------


def test_both_apis_count_against_the_callers_token_limit(stack):
    key = stack.key(AGENT_USER, [MEMBERS, INSIDERS])
    client = stack.client(key)
    first = client.responses.create(model=SIMULATED_MODEL, input="hello", max_output_tokens=50)
    assert first.usage.total_tokens > 40  # over the user's 40 tokens/min
    messages = anthropic_client(stack.gateway_url, key)

    def refused() -> anthropic.RateLimitError | None:
        try:
            messages.messages.create(
                model=SIMULATED_MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}]
            )
        except anthropic.RateLimitError as exc:
            return exc
        return None  # the count reaches the limiter just after the answer

    refusal = eventually(refused, 5, "the token limit to apply", interval_s=0.1)
    assert refusal.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=SIMULATED_MODEL, input="again", max_output_tokens=1)
