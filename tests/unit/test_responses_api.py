"""POST /v1/responses on the frontend harness, through the real `openai` package: the response and
its event sequence, input items, function calls and reasoning items as the frontend renders them from
the text the scripted engine writes, and every refusal in OpenAI's error shape."""
import json

import openai
import pytest
from openai import OpenAI

from common import default_model

MODEL = default_model.NAME
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "The forecast for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"], "additionalProperties": False}},
    {"type": "function", "name": "get_time", "description": "The time in a zone", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}},
]
QUESTION = "What is the weather in Paris for 3 days?"
MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added"]
MESSAGE_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def client_of(frontend) -> OpenAI:
    return OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=30, http_client=frontend.http)


@pytest.fixture
def client(frontend) -> OpenAI:
    return client_of(frontend)


def refusal(call, *args, **kwargs) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call(*args, **kwargs)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    return error


def test_a_plain_response_ends_at_max_output_tokens(client):
    response = client.responses.create(model=MODEL, instructions="You are terse.", input="Say something.",
                                       max_output_tokens=8, temperature=0.8, top_p=0.9,
                                       extra_body={"ignore_eos": True, "seed": 3})
    assert response.object == "response" and response.id.startswith("resp_") and response.model == MODEL
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "incomplete"
    assert response.output_text == message.content[0].text and response.output_text
    assert response.usage.output_tokens == 8 and response.usage.input_tokens > 5
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert (response.instructions, response.temperature, response.top_p) == ("You are terse.", 0.8, 0.9)
    assert response.store is False


def test_input_items_make_the_same_prompt_as_the_chat_they_stand_for(client):
    """Messages, a turn's two calls and their outputs: the prompt counts as many tokens as that chat's."""
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris", "days": 3}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": '{"zone": "CET"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21C."},
        {"type": "function_call_output", "call_id": "call_2", "output": "12:00"},
    ]
    messages = [
        {"role": "system", "content": "Answer from the tools."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C."},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    ]
    chat_tools = [{"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}} for tool in TOOLS]
    response = client.responses.create(model=MODEL, instructions="Answer from the tools.", input=items, tools=TOOLS,
                                       tool_choice="none", max_output_tokens=4)
    chat = client.chat.completions.create(model=MODEL, messages=messages, tools=chat_tools, tool_choice="none",
                                          max_tokens=1)
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert [item.type for item in response.output] == ["message"]


def test_a_stream_is_openais_event_sequence(client):
    events = list(client.responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=6, stream=True,
                                          extra_body={"ignore_eos": True}))
    kinds = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", *MESSAGE_EVENTS,
                     *["response.output_text.delta"] * len(deltas), *MESSAGE_DONE, "response.incomplete"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    assert final.status == "incomplete" and final.usage.output_tokens == 6
    assert "".join(delta.delta for delta in deltas) == final.output_text == events[-3].part.text
    assert {event.item_id for event in deltas} == {final.output[0].id}


def test_the_sdks_stream_helper_assembles_the_same_response(client, frontend):
    frontend.engine.reply('{"name": "Ada", "age": 36}')
    person = {"format": {"type": "json_schema", "name": "person", "schema": {"type": "object"}}}
    with client.responses.stream(model=MODEL, input="Describe a person.", max_output_tokens=200, text=person) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(texts)
    assert json.loads(final.output_text) == {"name": "Ada", "age": 36}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_required_tool_is_a_function_call_item(client, frontend, stream):
    frontend.engine.reply('[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]')
    body = dict(model=MODEL, input=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                max_output_tokens=300)
    if stream:
        events = list(client.responses.create(**body, stream=True))
        assert [event.type for event in events[2:-1]] == [
            "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done"]
        assert events[3].delta == events[4].arguments == events[5].item.arguments
        response = events[-1].response
    else:
        response = client.responses.create(**body)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.call_id.startswith("call_") and call.status == "completed"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris", "days": 3})


def test_a_named_function_is_the_one_called(client, frontend):
    frontend.engine.reply('{"zone": "CET"}')
    response = client.responses.create(model=MODEL, input=QUESTION, tools=TOOLS, max_output_tokens=300,
                                       tool_choice={"type": "function", "name": "get_time"})
    [call] = response.output
    assert (call.name, json.loads(call.arguments)) == ("get_time", {"zone": "CET"})
    assert frontend.engine.added[-1].sampling["structured_outputs"]["json"] == TOOLS[1]["parameters"]


def test_previous_response_id_is_refused_saying_to_send_the_conversation(client):
    error = refusal(client.responses.create, model=MODEL, input="And then?", previous_response_id="resp_123")
    assert error["param"] == "previous_response_id" and "input items" in error["message"]


@pytest.mark.parametrize("fields, param", [
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content[0].image_url"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nowhere"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}}}, "text.format.schema"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "nothing"}}]}, "tools[0].parameters"),
    ({"temperature": -1}, "temperature"),
])
def test_a_bad_field_is_a_400_in_openais_shape_naming_it(client, frontend, fields, param):
    sent = len(frontend.engine.added)
    error = refusal(client.responses.create, **{"model": MODEL, "input": "hi", **fields})
    assert error["param"] == param
    assert len(frontend.engine.added) == sent


def test_the_input_items_are_bounded_by_max_messages(frontend):
    # Raw HTTP: the SDK alone takes seconds to build 3000 items.
    answer = frontend.post("/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": "hi"}] * 3000})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "input" and "limit" in error["message"]


def test_nothing_is_stored_to_retrieve_or_delete(client, frontend):
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call("resp_123")
        error = caught.value.response.json()["error"]
        assert error["code"] == 404 and "stores no responses" in error["message"]
    assert frontend.http.get("/v1/responses/resp_123/input_items").status_code == 404


def test_thinking_is_a_reasoning_item_before_the_message(frontends):
    thinking = frontends.get(reasoning_parser="deepseek_r1")
    thinking.engine.reply("<think>the sea is wide</think>it is calm", "<think>the sea is wide</think>it is calm")
    client = client_of(thinking)
    response = client.responses.create(model=MODEL, input="Say something.", max_output_tokens=100)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message" and response.status == "completed"
    assert (reasoning.content[0].text, response.output_text) == ("the sea is wide", "it is calm")
    events = list(client.responses.create(model=MODEL, input="Say something.", max_output_tokens=100, stream=True))
    thought = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    assert thought == "the sea is wide" and events[-1].response.output_text == "it is calm"
    assert [event.item.type for event in events if event.type == "response.output_item.added"] == [
        "reasoning", "message"]
