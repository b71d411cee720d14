"""Anthropic's Messages API end to end: the official `anthropic` package, through nginx and two
frontends to the real engine.

The tiny model's weights are random, so its text is gibberish: tests check that forced tool input
validates against its schema. Shapes, stop reasons, token counting and refusals are checked on the
frontend harness (tests/unit/test_anthropic_api.py). Newer SDKs no longer take temperature, top_p and
top_k as arguments; they go in `extra_body`.
"""
import anthropic
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
    # Anthropic's input_tokens leave out what the prefix cache served (cache_read_input_tokens).
    prompt = answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    assert prompt > message.usage.input_tokens + message.usage.cache_read_input_tokens
    counted = client.messages.count_tokens(model=MODEL, messages=follow_up, tools=TOOLS)
    assert counted.input_tokens == prompt


def test_tool_choice_tool_calls_that_tool(client):
    message = client.messages.create(model=MODEL, max_tokens=200, messages=WEATHER_QUESTION, tools=TOOLS,
                                     tool_choice={"type": "tool", "name": "get_time"})
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.name == "get_time"
    jsonschema.validate(call.input, SCHEMAS["get_time"])


def test_a_body_past_the_limit_is_refused_by_nginx_in_anthropic_shape(client):
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**greedy(messages=[{"role": "user", "content": "x" * 1_100_000}]))
    assert raised.value.status_code == 413
    assert raised.value.body["error"]["type"] == "request_too_large"
