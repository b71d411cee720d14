"""Anthropic's Messages API end to end: the official `anthropic` package, through nginx and two
frontends to the real engine.

The tiny model's weights are random, so its text is gibberish: answers are asked for greedily
(temperature 0), so that a streamed and a whole answer to one body are the same text, and tests
check shapes, counts, stop reasons, and that forced tool input validates against its schema.
Newer SDKs no longer take temperature, top_p and top_k as arguments; they go in `extra_body`.
"""
import re

import anthropic
import httpx
import jsonschema
import pytest
from anthropic import Anthropic

from common import default_model

MODEL = default_model.NAME
QUESTION = [{"role": "user", "content": "Tell me a long story about the sea."}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"name": "get_weather", "description": "The forecast for a city", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "The time in a zone", "input_schema": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}}, "required": ["zone"],
        "additionalProperties": False}},
]
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in TOOLS}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def client(service) -> Anthropic:
    return Anthropic(base_url=service.url, api_key="unused", max_retries=0, timeout=120)


def greedy(extra_body: dict | None = None, **fields) -> dict:
    return {"model": MODEL, "max_tokens": 24, "system": "You are a storyteller.", "messages": QUESTION,
            "extra_body": {"temperature": 0.0, **(extra_body or {})}, **fields}


def test_create_answers_a_message(client):
    message = client.messages.create(**greedy())
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.stop_sequence is None
    assert 0 < message.usage.output_tokens <= 24
    assert all(block.type == "text" and block.text.strip() for block in message.content)


def test_max_tokens_stop_reason(client):
    message = client.messages.create(**greedy(max_tokens=1))
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 1)


def test_stream_sends_anthropic_events_that_accumulate_to_the_whole_answer(client):
    whole = client.messages.create(**greedy())
    with client.messages.stream(**greedy()) as stream:
        raw = [event for event in stream if event.type in RAW_EVENTS]
        final = stream.get_final_message()
    sequence = " ".join(event.type for event in raw)
    assert re.fullmatch(r"message_start( content_block_start( content_block_delta)+ content_block_stop)*"
                        r" message_delta message_stop", sequence), sequence
    assert raw[0].message.usage.input_tokens == whole.usage.input_tokens
    assert raw[0].message.content == [] and raw[0].message.stop_reason is None
    text_deltas = "".join(event.delta.text for event in raw if event.type == "content_block_delta")
    assert text_deltas == "".join(block.text for block in final.content)
    assert final.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})


RAW_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
              "message_stop"}


def test_stop_sequence_ends_the_answer_and_is_named(client):
    text = client.messages.create(**greedy()).content[0].text
    assert len(text) > 12, "the greedy answer is long enough to cut"
    stop = text[8:11]
    message = client.messages.create(**greedy(stop_sequences=["zzzz-never", stop]))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    assert message.content[0].text == text[: text.index(stop)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_choice_any_gives_input_valid_for_its_schema_then_a_tool_result_follows(client, stream):
    body = dict(model=MODEL, max_tokens=400, messages=WEATHER_QUESTION, tools=TOOLS,
                tool_choice={"type": "any", "disable_parallel_tool_use": True})
    if stream:
        with client.messages.stream(**body) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**body)
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.id.startswith("toolu_")
    jsonschema.validate(call.input, SCHEMAS[call.name])

    follow_up = WEATHER_QUESTION + [
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=8, messages=follow_up, tools=TOOLS)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens > message.usage.input_tokens
    counted = client.messages.count_tokens(model=MODEL, messages=follow_up, tools=TOOLS)
    assert counted.input_tokens == answer.usage.input_tokens


def test_tool_choice_tool_calls_that_tool(client):
    message = client.messages.create(model=MODEL, max_tokens=200, messages=WEATHER_QUESTION, tools=TOOLS,
                                     tool_choice={"type": "tool", "name": "get_time"})
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.name == "get_time"
    jsonschema.validate(call.input, SCHEMAS["get_time"])


def test_count_tokens_is_the_prompt_a_create_uses(client):
    body = greedy(tools=TOOLS)
    created = client.messages.create(**body)
    counted = client.messages.count_tokens(model=MODEL, system=body["system"], messages=QUESTION, tools=TOOLS)
    assert counted.input_tokens == created.usage.input_tokens


@pytest.mark.parametrize("fields, error, kind, field", [
    (dict(extra_body={"temperature": 1.5}), anthropic.BadRequestError, "invalid_request_error", "temperature"),
    (dict(messages=[{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AA=="}}]}]),
     anthropic.BadRequestError, "invalid_request_error", "messages[0].content[0]"),
    (dict(tools=[{"name": "f", "input_schema": {"type": "string"}}]),
     anthropic.BadRequestError, "invalid_request_error", "tools[0].input_schema.type"),
    (dict(tools=TOOLS, tool_choice={"type": "tool", "name": "nope"}),
     anthropic.BadRequestError, "invalid_request_error", "tool_choice"),
    (dict(max_tokens=10**9), anthropic.BadRequestError, "invalid_request_error", "max_tokens"),
    (dict(model="no-such-model"), anthropic.NotFoundError, "not_found_error", "model"),
], ids=["temperature", "image block", "input_schema", "unknown tool", "context", "model"])
def test_bad_requests_answer_in_anthropic_shape_naming_the_field(client, fields, error, kind, field):
    with pytest.raises(error) as raised:
        client.messages.create(**greedy(**fields))
    body = raised.value.body
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind
    assert field in body["error"]["message"]


def test_the_routes_answer_only_post_in_anthropic_shape(service):
    answer = httpx.get(service.url + "/v1/messages", timeout=30)
    assert answer.status_code == 405
    assert answer.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "GET is not allowed here: use POST"}}


def test_a_body_past_the_limit_is_refused_by_nginx_in_anthropic_shape(client):
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**greedy(messages=[{"role": "user", "content": "x" * 1_100_000}]))
    assert raised.value.status_code == 413
    assert raised.value.body["error"]["type"] == "request_too_large"
