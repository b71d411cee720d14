"""Anthropic's Messages API on the frontend harness, through the official `anthropic` package: the
event sequence of a stream, stop reasons, tool use as the frontend renders it from the text the
scripted engine writes, token counting, and refusals in Anthropic's error shape."""
import re

import anthropic
import httpx2
import pytest
from anthropic import Anthropic

from common import default_model

MODEL = default_model.NAME
QUESTION = [{"role": "user", "content": "Tell me a long story about the sea."}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city", "days"]}
TOOLS = [
    {"name": "get_weather", "description": "The forecast for a city", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "The time in a zone", "input_schema": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}},
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
RAW_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
              "message_stop"}
STORY = "The sea was calm and the boat drifted far from the shore."


@pytest.fixture
def client(frontend) -> Anthropic:
    # The SDK's own HTTP package; plain HTTP on loopback needs no TLS context (tens of ms of CPU each).
    with httpx2.Client(verify=False) as http:
        yield Anthropic(base_url=frontend.url, api_key="unused", max_retries=0, timeout=30, http_client=http)


def body(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 24, "system": "You are a storyteller.", "messages": QUESTION, **fields}


def test_max_tokens_stop_reason(client):
    message = client.messages.create(**body(max_tokens=1))
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 1)


def test_a_message_ending_at_eos_is_an_end_turn(client, frontend):
    frontend.engine.reply(STORY)
    message = client.messages.create(**body(max_tokens=200))
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert [(block.type, block.text) for block in message.content] == [("text", STORY)]


def test_stream_sends_anthropic_events_that_accumulate_to_the_whole_answer(client, frontend):
    frontend.engine.reply(STORY, STORY)
    whole = client.messages.create(**body(max_tokens=200))
    with client.messages.stream(**body(max_tokens=200)) as stream:
        raw = [event for event in stream if event.type in RAW_EVENTS]
        final = stream.get_final_message()
    sequence = " ".join(event.type for event in raw)
    assert re.fullmatch(r"message_start( content_block_start( content_block_delta)+ content_block_stop)*"
                        r" message_delta message_stop", sequence), sequence
    assert raw[0].message.usage.input_tokens == whole.usage.input_tokens
    assert raw[0].message.content == [] and raw[0].message.stop_reason is None
    text_deltas = "".join(event.delta.text for event in raw if event.type == "content_block_delta")
    assert text_deltas == "".join(block.text for block in final.content) == STORY
    assert final.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})


def test_stop_sequence_ends_the_answer_and_is_named(client, frontend):
    frontend.engine.reply(STORY)
    message = client.messages.create(**body(max_tokens=200, stop_sequences=["zzzz-never", "boat"]))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "boat")
    assert message.content[0].text == STORY[: STORY.index("boat")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_choice_any_renders_the_calls_as_tool_use_blocks(client, frontend, stream):
    frontend.engine.reply('[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]')
    request = dict(model=MODEL, max_tokens=400, messages=WEATHER_QUESTION, tools=TOOLS,
                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris", "days": 3})


def test_tool_choice_tool_asks_the_engine_for_that_tools_input(client, frontend):
    frontend.engine.reply('{"zone": "CET"}')
    message = client.messages.create(model=MODEL, max_tokens=200, messages=WEATHER_QUESTION, tools=TOOLS,
                                     tool_choice={"type": "tool", "name": "get_time"})
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert (call.name, call.input) == ("get_time", {"zone": "CET"})
    assert frontend.engine.added[-1].sampling["structured_outputs"]["json"] == TOOLS[1]["input_schema"]


def test_a_tool_result_follows_up_and_count_tokens_counts_that_prompt(client):
    history = WEATHER_QUESTION + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris", "days": 3}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}]},
    ]
    first = client.messages.create(model=MODEL, max_tokens=8, messages=WEATHER_QUESTION, tools=TOOLS)
    answer = client.messages.create(model=MODEL, max_tokens=8, messages=history, tools=TOOLS)
    assert answer.usage.input_tokens > first.usage.input_tokens
    assert client.messages.count_tokens(model=MODEL, messages=history, tools=TOOLS).input_tokens == \
        answer.usage.input_tokens


def test_count_tokens_is_the_prompt_a_create_uses(client):
    created = client.messages.create(**body(tools=TOOLS))
    counted = client.messages.count_tokens(model=MODEL, system="You are a storyteller.", messages=QUESTION,
                                           tools=TOOLS)
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
def test_bad_requests_answer_in_anthropic_shape_naming_the_field(client, frontend, fields, error, kind, field):
    sent = len(frontend.engine.added)
    with pytest.raises(error) as raised:
        client.messages.create(**body(**fields))
    error_body = raised.value.body
    assert set(error_body) == {"type", "error"} and error_body["type"] == "error"
    assert error_body["error"]["type"] == kind
    assert field in error_body["error"]["message"]
    assert len(frontend.engine.added) == sent


@pytest.mark.parametrize("fields, field", [
    (dict(messages=[]), "messages"),
    (dict(messages=QUESTION, tools=[{"name": "f", "input_schema": {"type": "string"}}]), "tools[0].input_schema.type"),
], ids=["no messages", "input_schema"])
def test_count_tokens_refuses_naming_the_field_in_anthropic_shape(client, frontend, fields, field):
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.count_tokens(model=MODEL, **fields)
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "invalid_request_error"
    assert field in raised.value.body["error"]["message"]
    assert frontend.http.get("/v1/messages/count_tokens").status_code == 405


def test_the_routes_answer_only_post_in_anthropic_shape(frontend):
    answer = frontend.http.get("/v1/messages")
    assert answer.status_code == 405
    assert answer.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "GET is not allowed here: use POST"}}


def test_a_body_past_the_limit_is_refused_in_anthropic_shape(client):
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**body(messages=[{"role": "user", "content": "x" * 1_100_000}]))
    assert raised.value.status_code == 413
    assert raised.value.body["error"]["type"] == "request_too_large"


def test_an_engine_refusal_is_a_400_in_anthropic_shape(client, frontend):
    frontend.engine.refuse("the request was refused")
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**body())
    assert raised.value.body["error"] == {"type": "invalid_request_error", "message": "the request was refused"}

