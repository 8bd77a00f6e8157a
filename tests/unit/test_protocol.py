"""The gateway's wire models: what stops at the gateway, and what passes through untouched."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from deployments.openai_errors import lone_surrogate_at
from serve_app.protocol import ChatCompletionRequest, CompletionRequest


def chat(*messages: dict, **fields) -> dict:
    return {"model": "m", "messages": list(messages), **fields}


def test_unknown_fields_pass_through_and_nulls_are_dropped():
    body = chat({"role": "user", "content": "hi", "x_note": 1}, guided_json={"a": 1}, seed=None)
    forwarded = json.loads(
        ChatCompletionRequest.model_validate(body).model_dump_json(exclude_none=True)
    )
    assert forwarded == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "x_note": 1}],
        "guided_json": {"a": 1},
    }


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:/v"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
)
def test_messages_that_fit_their_role_are_accepted(message):
    ChatCompletionRequest.model_validate(chat(message))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {}}]},
            "input_audio",
        ),
        (
            {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "role assistant may hold text, refusal content parts, not image_url",
        ),
        (
            {"role": "system", "content": [{"type": "video_url", "video_url": {"url": "x"}}]},
            "may hold text content parts, not video_url",
        ),
        ({"role": "user", "content": [{"type": "Z"}]}, "does not match any of the expected tags"),
        ({"role": "user", "content": "hi", "tool_calls": []}, "tool_calls belong to assistant"),
        ({"role": "assistant", "tool_calls": [{}]}, "Field required"),
        ({"role": "user", "content": "hi", "tool_call_id": "c1"}, "tool_call_id belongs to tool"),
        ({"role": "robot", "content": "hi"}, "Input should be"),
    ],
)
def test_messages_vllm_would_fail_on_stop_at_the_gateway(message, reason):
    with pytest.raises(ValidationError, match=reason):
        ChatCompletionRequest.model_validate(chat(message))


@pytest.mark.parametrize(
    "fields",
    [{"max_tokens": 0}, {"temperature": 3}, {"top_p": 0}, {"n": 0}, {"messages": []}],
)
def test_out_of_range_sampling_fields_stop_at_the_gateway(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(chat({"role": "user", "content": "hi"}, **fields))


@pytest.mark.parametrize("prompt", ["once", ["a", "b"], [1, 2], [[1], [2]]])
def test_every_openai_prompt_shape_is_accepted(prompt):
    CompletionRequest.model_validate({"model": "m", "prompt": prompt})


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("plain", None),
        ("naïve ✓ 😀", None),
        ("a\ud800b", ()),
        ({"messages": [{"content": "ok"}, {"content": "\udfff"}]}, ("messages", 1, "content")),
        ({"prompt": ["ok", 3, None, "x\ud83dy"]}, ("prompt", 3)),
        ({"n": 1, "stop": None}, None),
    ],
)
def test_a_lone_surrogate_is_found_where_it_is(value, where):
    assert lone_surrogate_at(value) == where
