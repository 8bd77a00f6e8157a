"""The Responses and Messages translations onto chat completions, without a server."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from deployments.openai_errors import describe_request_errors
from serve_app.errors import InvalidRequestError
from serve_app.protocol import ChatMessage
from serve_app.translation import messages, responses

ANSWER = {
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def events_of(raw: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for event in raw:
        name, data = event.decode().strip().split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def stream_chunks(*deltas: dict, finish: str = "stop") -> list[dict]:
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{"choices": [{"index": 0, "delta": delta}]} for delta in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    return chunks


def call_delta(arguments: str, first: bool = False) -> dict:
    call: dict = {"index": 0, "function": {"arguments": arguments}}
    if first:
        call |= {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}
    return {"tool_calls": [call]}


# -- Responses ----------------------------------------------------------------


def response_request(**fields) -> responses.ResponseCreateRequest:
    return responses.ResponseCreateRequest.model_validate({"model": "m", "input": "hi", **fields})


def test_text_input_is_one_user_message_after_the_instructions_and_the_history():
    request = response_request(instructions="Be brief.")
    history = [ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="b")]
    conversation = [*history, *responses.input_messages(request.input)]
    chat = responses.chat_request(request, conversation, reasoning=False)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "hi"),
    ]


def test_function_calls_join_the_assistant_turn_and_their_outputs_are_tool_messages():
    request = response_request(
        input=[
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "message", "role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]
    )
    chat = responses.input_messages(request.input)
    assert [m.role for m in chat] == ["system", "user", "assistant", "tool"]
    assert chat[1].content == "weather?"
    assert [c.id for c in chat[2].tool_calls] == ["c1", "c2"]
    assert chat[2].content == "Checking."
    assert (chat[3].tool_call_id, chat[3].content) == ("c1", "sunny")


def test_an_item_chat_cannot_serve_is_refused_naming_it():
    with pytest.raises(ValidationError) as refused:
        response_request(input=[{"role": "user", "content": "hi"}, {"type": "web_search_call"}])
    message, param, _ = describe_request_errors(refused.value.errors())
    assert param == "input.1" and "function_call_output" in message
    with pytest.raises(ValidationError):
        response_request(tools=[{"type": "web_search"}])


def test_images_only_in_user_messages():
    image = {"type": "input_image", "image_url": "https://example.org/a.png"}
    user = response_request(input=[{"role": "user", "content": [image]}])
    (message,) = responses.input_messages(user.input)
    assert message.content[0].image_url.url == image["image_url"]
    system = response_request(input=[{"role": "system", "content": [image]}])
    with pytest.raises(InvalidRequestError) as refused:
        responses.input_messages(system.input)
    assert refused.value.param == "input[0].content"


def test_tools_choice_format_and_reasoning_become_chat_fields():
    request = response_request(
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        reasoning={"effort": "low"},
        max_output_tokens=9,
        stream=True,
    )
    conversation = responses.input_messages(request.input)
    chat = responses.chat_request(request, conversation, reasoning=True)
    assert chat.tools == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert chat.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert chat.response_format["json_schema"]["name"] == "out"
    assert chat.max_tokens == 9 and chat.stream and chat.stream_options.include_usage
    assert chat.model_extra["reasoning_effort"] == "low"
    plain = responses.chat_request(request, conversation, reasoning=False)
    assert "reasoning_effort" not in (plain.model_extra or {})


def test_a_chat_answer_becomes_a_response_with_its_items_and_usage():
    turn = responses.Turn(id="resp_1", created_at=1.0, request=response_request())
    response = responses.response_from_chat(turn, ANSWER)
    assert response.status == "completed" and response.output_text == "Looking."
    message, call = response.output
    assert message.type == "message" and call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')
    assert response.usage.input_tokens == 7 and response.usage.output_tokens == 3
    assert response.usage.input_tokens_details.cached_tokens == 4
    (following,) = responses.output_messages(response)
    assert following.content == "Looking." and following.tool_calls[0].id == "call_1"
    cut = {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": "length"}]}
    incomplete = responses.response_from_chat(turn, cut)
    assert incomplete.status == "incomplete"
    assert incomplete.incomplete_details.reason == "max_output_tokens"


def test_input_items_get_ids_and_content_parts():
    request = response_request(
        input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "c", "output": "x"},
        ]
    )
    user, output = responses.input_items(request.input)
    assert user["content"] == [{"type": "input_text", "text": "hi"}]
    assert user["id"].startswith("msg_") and output["id"].startswith("fco_")


def test_a_stream_of_text_then_a_call_is_the_responses_event_sequence():
    turn = responses.Turn(id="resp_1", created_at=1.0, request=response_request())
    stream = responses.ResponseStream(turn)
    raw = stream.start()
    chunks = stream_chunks({"content": "He"}, {"content": "llo"}, call_delta("", True))
    chunks[3:3] = [{"choices": [{"index": 0, "delta": call_delta('{"a":')}]}]
    chunks[4:4] = [{"choices": [{"index": 0, "delta": call_delta("1}")}]}]
    for chunk in chunks:
        raw += stream.take(chunk)
    raw += stream.finish()
    events = events_of(raw)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    assert events[2][1]["item"]["content"] == []  # its part comes in the next event
    assert events[6][1]["text"] == "Hello"
    assert events[12][1]["arguments"] == '{"a":1}'
    completed = events[-1][1]["response"]
    assert [item["type"] for item in completed["output"]] == ["message", "function_call"]
    assert completed["usage"]["output_tokens"] == 2
    assert stream.response is not None and stream.response.output_text == "Hello"


def test_a_failed_stream_ends_with_error_and_response_failed():
    turn = responses.Turn(id="resp_1", created_at=1.0, request=response_request())
    stream = responses.ResponseStream(turn)
    stream.start()
    stream.take({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    error = {"message": "The site stopped.", "type": "server_error", "code": "upstream_error"}
    events = events_of(stream.fail(error))
    assert [name for name, _ in events] == ["error", "response.failed"]
    assert events[0][1]["message"] == "The site stopped."
    failed = events[1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


# -- Messages -------------------------------------------------------------------


def messages_request(**fields) -> messages.MessagesRequest:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return messages.MessagesRequest.model_validate({**body, **fields})


def test_max_tokens_is_required_as_in_anthropics_api():
    with pytest.raises(ValidationError) as refused:
        messages.MessagesRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert refused.value.errors()[0]["loc"] == ("max_tokens",)


def test_tool_use_and_tool_result_blocks_become_calls_and_tool_messages():
    request = messages_request(
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Also:"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": [{"type": "text", "text": "no"}],
                        "is_error": True,
                    },
                ],
            },
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        top_k=5,
    )
    chat = messages.chat_request(request)
    assert [m.role for m in chat.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]
    assert chat.messages[0].content == "A\n\nB"
    (call,) = chat.messages[2].tool_calls
    assert call.id == "t1" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert chat.messages[2].content == "Checking."
    assert chat.messages[4].content == "Error: no"
    assert chat.messages[5].content == "Also:"
    assert chat.tool_choice == "required" and chat.model_extra["parallel_tool_calls"] is False
    assert chat.tools[0]["function"]["parameters"] == {"type": "object"}
    assert chat.stop == ["END"] and chat.max_tokens == 8 and chat.model_extra["top_k"] == 5


def test_a_user_message_with_tool_use_is_refused():
    request = messages_request(
        messages=[
            {
                "role": "user",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            }
        ]
    )
    with pytest.raises(InvalidRequestError) as refused:
        messages.chat_request(request)
    assert refused.value.param == "messages.0.content"


def test_a_chat_answer_becomes_a_message_with_anthropics_stop_reasons():
    turn = messages.Turn(id="msg_1", request=messages_request(stop_sequences=["END"]))
    message = messages.message_from_chat(turn, ANSWER)
    text, use = message.content
    assert text.text == "Looking." and use.type == "tool_use"
    assert use.input == {"a": 1} and message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 7 and message.usage.cache_read_input_tokens == 4
    stopped = {"finish_reason": "stop", "stop_reason": "END", "message": {"content": "x"}}
    assert messages.message_from_chat(turn, {"choices": [stopped]}).stop_sequence == "END"
    cut = {"finish_reason": "length", "message": {"content": "x"}}
    assert messages.message_from_chat(turn, {"choices": [cut]}).stop_reason == "max_tokens"
    # vLLM finishes a call forced by name with "stop": it is still a tool use.
    forced = {**ANSWER["choices"][0], "finish_reason": "stop"}
    assert messages.message_from_chat(turn, {"choices": [forced]}).stop_reason == "tool_use"
    garbled = {
        "finish_reason": "tool_calls",
        "message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]},
    }
    (kept,) = messages.message_from_chat(turn, {"choices": [garbled]}).content
    assert kept.input == {"arguments": "{oops"}


def test_a_stream_is_anthropics_event_sequence():
    stream = messages.MessageStream(messages.Turn(id="msg_1", request=messages_request()))
    raw = stream.start()
    chunks = stream_chunks(
        {"content": "He"}, {"content": "llo"}, call_delta("", True), call_delta('{"a":1}')
    )
    for chunk in chunks:
        raw += stream.take(chunk)
    raw += stream.finish()
    events = events_of(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[5][1]["index"] == 1 and events[5][1]["content_block"]["name"] == "f"
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":1}'}
    assert events[8][1]["delta"]["stop_reason"] == "tool_use"
    assert events[8][1]["usage"] == {"input_tokens": 5, "output_tokens": 2}


def test_a_failed_stream_ends_with_anthropics_error_event():
    (event,) = messages.MessageStream.fail({"message": "Too many.", "type": "rate_limit_error"})
    ((name, data),) = events_of([event])
    assert name == "error"
    assert data == {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many."}}


def test_a_request_that_leaves_nothing_to_answer_is_a_400_naming_its_field():
    request = response_request(input=[{"type": "reasoning", "id": "rs_1"}])
    with pytest.raises(InvalidRequestError) as empty:
        responses.chat_request(request, responses.input_messages(request.input), False)
    assert empty.value.param == "input"
    with pytest.raises(InvalidRequestError) as blank:
        messages.chat_request(messages_request(messages=[{"role": "user", "content": []}]))
    assert blank.value.param == "messages"
