"""POST /v1/responses end to end: the real `openai` package's `responses` calls, whole and streamed, through
nginx and two frontends to the real engine. The event sequences, input items and refusals are checked on the
frontend harness (tests/unit/test_responses_api.py).

The tiny model's weights are random: tests check shapes, counts, event order, and that grammar-constrained
output (required tools, json_schema) is valid. `ignore_eos` makes a run end at max_output_tokens for sure.
"""
import json
import re

import jsonschema
import pytest
from openai import OpenAI

from common import default_model
from tests.conftest import TEXT_API_KEY

MODEL = default_model.NAME
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 12}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "The forecast for a city", "parameters": WEATHER},
    {"type": "function", "name": "get_time", "description": "The time in a zone", "parameters": TIME},
]
SCHEMAS = {tool["name"]: tool["parameters"] for tool in TOOLS}
QUESTION = "What is the weather in Paris for 3 days?"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    return OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_plain_response_ends_at_max_output_tokens(client):
    response = client.responses.create(model=MODEL, instructions="You are terse.", input="Say something.",
                                       max_output_tokens=8, extra_body={"ignore_eos": True, "seed": 3})
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in response.output] == ["message"] and response.output_text
    assert response.usage.output_tokens == 8


def test_the_sdks_stream_helper_assembles_the_same_response(client):
    person = {"format": {"type": "json_schema", "name": "person", "schema": PERSON}}
    with client.responses.stream(model=MODEL, input="Describe a person.", max_output_tokens=200, text=person) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(texts)
    jsonschema.validate(json.loads(final.output_text), PERSON)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_required_tool_gives_a_call_valid_for_its_schema(client, stream):
    body = dict(model=MODEL, input=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                max_output_tokens=300, extra_body={"seed": 21})
    # The event order is the frontend harness's to check (tests/unit/test_responses_api.py).
    response = list(client.responses.create(**body, stream=True))[-1].response if stream else \
        client.responses.create(**body)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def test_a_named_function_is_the_one_called(client):
    response = client.responses.create(model=MODEL, input=QUESTION, tools=TOOLS, max_output_tokens=300,
                                       tool_choice={"type": "function", "name": "get_time"})
    [call] = response.output
    assert call.name == "get_time"
    jsonschema.validate(json.loads(call.arguments), TIME)


def test_a_tool_round_trip_follows_up_on_the_calls_output(client):
    first = client.responses.create(model=MODEL, input=QUESTION, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, max_output_tokens=300)
    [call] = first.output
    history = [{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C."}]
    second = client.responses.create(model=MODEL, input=history, tools=TOOLS, max_output_tokens=6,
                                     extra_body={"ignore_eos": True})
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.status == "incomplete" and second.output[-1].type == "message"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_output_validates(client, stream):
    body = dict(model=MODEL, input="Describe a person.", max_output_tokens=200,
                text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    if stream:
        events = list(client.responses.create(**body, stream=True))
        response = events[-1].response
    else:
        response = client.responses.create(**body)
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(response.output_text), PERSON)


def test_json_object_output_is_an_object(client):
    response = client.responses.create(model=MODEL, input="Give me JSON.", max_output_tokens=200,
                                       text={"format": {"type": "json_object"}}, extra_body={"seed": 1})
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)
    else:  # an object that kept growing: cut where max_output_tokens ran out
        assert response.output_text.startswith("{") and response.usage.output_tokens == 200


# Reasoning: the tiny model never thinks on its own, so a regex writes the markers and the split is the server's.

WORDS = "[a-z ]{3,20}"


@pytest.fixture(scope="module")
def reasoning_client(text_api_service):
    return OpenAI(base_url=f"{text_api_service.url}/v1", api_key=TEXT_API_KEY, max_retries=0, timeout=120)


def test_thinking_is_a_reasoning_item_before_the_message(reasoning_client):
    body = dict(model=MODEL, input="Say something.", max_output_tokens=100, temperature=0,
                extra_body={"structured_outputs": {"regex": f"<think>{WORDS}</think>{WORDS}"}})
    response = reasoning_client.responses.create(**body)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message" and response.status == "completed"
    assert re.fullmatch(WORDS, reasoning.content[0].text) and re.fullmatch(WORDS, response.output_text)
    events = list(reasoning_client.responses.create(**body, stream=True))
    thought = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    assert thought == reasoning.content[0].text and events[-1].response.output_text == response.output_text
    assert [event.item.type for event in events if event.type == "response.output_item.added"] == [
        "reasoning", "message"]
