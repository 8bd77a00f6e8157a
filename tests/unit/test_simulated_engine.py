"""The simulated engine's tool calls: when it makes one, what the call says, how it streams."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
)

from deployments.simulated_engine import TOOL_CALL_MARKER, SimulatedEngine, count_tokens
from deployments.site_config import SIMULATED_ENGINE_KEY

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "lat": {"type": "number"},
        "alerts": {"type": "boolean"},
        "hours": {"type": "array", "items": {"type": "integer"}},
        "filters": {"type": "object"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": ["string", "null"]},
        "anything": {},
        "optional": {"type": "string"},
    },
    "required": ["city", "days", "lat", "alerts", "hours", "filters", "unit", "note", "anything"],
}
WEATHER_ARGUMENTS = {
    "city": "simulated",
    "days": 1,
    "lat": 1.5,
    "alerts": True,
    "hours": [],
    "filters": {},
    "unit": "celsius",
    "note": "simulated",
    "anything": None,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"],
            },
        },
    },
]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat(config: dict | None = None, **request: Any) -> list[Any]:
    """Everything the engine yields for one chat request, started without Ray."""
    timing = {"ttft_ms": 0, "tpot_ms": 0}
    llm_config = SimpleNamespace(
        model_id="sim", experimental_configs={SIMULATED_ENGINE_KEY: {**timing, **(config or {})}}
    )

    async def run() -> list[Any]:
        engine = SimulatedEngine(llm_config)
        await engine.start()
        body = ChatCompletionRequest(model="sim", **request)
        return [item async for item in engine.chat(body)]

    return asyncio.run(run())


def whole(config: dict | None = None, **request: Any) -> ChatCompletionResponse:
    (response,) = chat(config, **request)
    assert isinstance(response, ChatCompletionResponse), response
    return response


def test_marker_is_the_documented_prefix():
    assert TOOL_CALL_MARKER == "[tool_call"


def test_marker_calls_first_tool_with_arguments_built_from_its_schema():
    response = whole(messages=user("What is the weather? [tool_call]"), tools=TOOLS)
    (choice,) = response.choices
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content is None  # as vLLM under tool_choice auto
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    assert response.usage.completion_tokens == count_tokens(call.function.arguments) + 1
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_marker_with_a_name_calls_that_tool():
    response = whole(messages=user("What time is it? [tool_call:get_time]"), tools=TOOLS)
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "simulated"}


def test_marker_naming_an_unoffered_tool_is_a_400_on_messages():
    (error,) = chat(messages=user("[tool_call:get_stock]"), tools=TOOLS)
    assert isinstance(error, ErrorResponse)
    assert (error.error.code, error.error.param) == (400, "messages")
    assert "get_stock" in error.error.message


def test_named_tool_choice_calls_that_tool_and_finishes_stop_as_vllm():
    response = whole(
        {"tool_calls": "never"},
        messages=user("What time is it?"),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (choice,) = response.choices
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    assert choice.message.content == ""  # as vLLM when the call is forced
    assert choice.finish_reason == "stop"  # OpenAI's and vLLM's for a named function


def test_required_tool_choice_calls_the_first_tool_even_when_config_says_never():
    response = whole(
        {"tool_calls": "never"}, messages=user("Weather?"), tools=TOOLS, tool_choice="required"
    )
    (choice,) = response.choices
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert choice.finish_reason == "tool_calls"


def test_always_config_calls_without_a_marker():
    response = whole({"tool_calls": "always"}, messages=user("Weather?"), tools=TOOLS)
    assert response.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_without_a_marker_the_answer_is_text():
    response = whole(messages=user("What is the weather?"), tools=TOOLS)
    (choice,) = response.choices
    assert choice.message.tool_calls == []
    assert choice.message.content
    assert choice.finish_reason == "stop"


def test_never_config_answers_text_despite_the_marker():
    response = whole({"tool_calls": "never"}, messages=user("Weather? [tool_call]"), tools=TOOLS)
    assert response.choices[0].message.tool_calls == []
    assert response.choices[0].message.content


def test_tool_choice_none_answers_text_despite_the_marker():
    response = whole(messages=user("Weather? [tool_call]"), tools=TOOLS, tool_choice="none")
    assert response.choices[0].message.tool_calls == []


def test_after_a_tool_result_the_answer_is_text_and_the_call_counts_in_the_prompt():
    arguments = json.dumps({"zone": "UTC"})
    messages = [
        {"role": "user", "content": "What time is it? [tool_call:get_time]"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    response = whole({"tool_calls": "always"}, messages=messages, tools=TOOLS)
    (choice,) = response.choices
    assert choice.message.tool_calls == []
    assert choice.message.content
    texts = [messages[0]["content"], f"get_time {arguments}", "12:00"]
    assert response.usage.prompt_tokens == sum(count_tokens(t) + 4 for t in texts)


def _events(items: list[Any]) -> list[dict]:
    assert all(isinstance(item, str) and item.startswith("data: ") for item in items), items
    return [json.loads(item.removeprefix("data: ")) for item in items]


def test_streamed_call_reassembles_to_the_whole_call_in_every_choice():
    request = {"messages": user("Weather? [tool_call]"), "tools": TOOLS, "n": 2}
    (expected,) = whole(**request).choices[0].message.tool_calls
    events = _events(chat(**request, stream=True, stream_options={"include_usage": True}))
    calls: dict[int, dict] = {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        call = calls.setdefault(choice["index"], {"arguments": "", "deltas": 0})
        if choice.get("finish_reason"):
            call["finish_reason"] = choice["finish_reason"]
        if "role" in choice["delta"]:
            assert call["deltas"] == 0, "the role chunk comes first"
            call["role"] = choice["delta"]["role"]
        for delta in choice["delta"].get("tool_calls", []):
            assert delta["index"] == 0
            call["deltas"] += 1
            if "id" in delta:
                assert call["deltas"] == 1, "the id and name come first"
                call.update(id=delta["id"], type=delta["type"], name=delta["function"]["name"])
            call["arguments"] += delta["function"]["arguments"]
    assert set(calls) == {0, 1}
    for call in calls.values():
        assert call["role"] == "assistant"
        assert (call["type"], call["name"]) == ("function", expected.function.name)
        assert json.loads(call["arguments"]) == json.loads(expected.function.arguments)
        assert call["deltas"] > 2, "the arguments come in pieces"
        assert call["finish_reason"] == "tool_calls"
    usage = events[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 2 * (count_tokens(call["arguments"]) + 1)
