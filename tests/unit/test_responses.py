"""The Responses API without an engine: requests as the openai SDK sends them turned into chat messages and
tool choices, and run updates rendered into Response objects and event streams that the SDK's own types accept."""
import json
import typing

import msgspec
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from frontend.http import HTTPError
from frontend.openai.responses import (
    ResponsesRequest, ResponseWriter, chat_messages, chat_tools, check_request, text_format, tool_choice_of,
    tool_plan,
)
from frontend.run.choices import Update
from frontend.text.reasoning import Content, Reasoning
from frontend.text.tool_parsers import ToolCall

# Each event type of the SDK by its `type`, for validating events as strictly as pydantic does.
EVENT_TYPES = {typing.get_args(kind.model_fields["type"].annotation)[0]: kind
               for kind in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}


def sdk_event(data: str):
    value = json.loads(data)
    return EVENT_TYPES[value["type"]].model_validate(value)


def request(**fields) -> ResponsesRequest:
    return msgspec.json.decode(json.dumps({"model": "m", "input": "hi", **fields}), type=ResponsesRequest)


def refusal(**fields) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        body = request(**fields)
        check_request(body)
        chat_messages(body, [])
        chat_tools(body)
        tool_choice_of(body)
        text_format(body)
    assert caught.value.status == 400
    return caught.value


def test_a_string_input_is_one_user_message_after_the_instructions():
    messages = chat_messages(request(input="What is 2+2?", instructions="Be brief."), [])
    assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "What is 2+2?")]


def test_items_become_the_chat_a_template_expects():
    body = request(input=[
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                                        {"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_a", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "noon"}]},
    ])
    messages = chat_messages(body, [])
    assert [(m.role, m.content) for m in messages] == [
        ("developer", "Use tools."), ("user", "Weather in Paris?"), ("assistant", "Let me look."),
        ("tool", "18C"), ("tool", "noon")]
    calls = messages[2].tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "weather", '{"city": "Paris"}'), ("call_b", "time", "{}")]
    assert [m.tool_call_id for m in messages[3:]] == ["call_a", "call_b"]


def test_a_call_without_an_assistant_message_gets_one():
    messages = chat_messages(request(input=[
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]), [])
    assert messages[1].role == "assistant" and messages[1].content is None and messages[1].tool_calls[0].id == "c1"


@pytest.mark.parametrize("fields, param, words", [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "input items"),
    ({"conversation": "conv_1"}, "conversation", "input items"),
    ({"background": True}, "background", "stores no responses"),
    ({"n": 2}, "n", "one output"),
    ({"response_format": {"type": "json_object"}}, "response_format", "text.format"),
    ({"input": []}, "input", "empty"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
     "input[0].content[0]", "only text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].image_url", "no files"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "not supported"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", "required"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "required"),
    ({"input": [{"type": "message", "content": "x"}]}, "input[0].role", "required"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "function tools"),
    ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name", "required"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "allowed_tools"}}, "tool_choice.type",
     "not supported"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "schema"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
])
def test_what_cannot_be_served_is_a_400_naming_the_field(fields, param, words):
    error = refusal(**fields)
    assert error.param == param and words in error.message


def test_a_field_of_the_wrong_type_is_refused_by_the_decoder_naming_it():
    with pytest.raises(msgspec.ValidationError, match=r"\$\.max_output_tokens"):
        request(max_output_tokens=0)


def test_tool_choice_is_none_auto_required_or_a_function_name():
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]
    assert tool_choice_of(request()) == "none"
    assert tool_choice_of(request(tools=tools)) == "auto"
    assert tool_choice_of(request(tools=tools, tool_choice="required")) == "required"
    assert tool_choice_of(request(tools=tools, tool_choice={"type": "function", "name": "weather"})) == "weather"
    assert chat_tools(request(tools=tools))[0].function.name == "weather"


def events_of(chunks: list[bytes]) -> list:
    """The events of a stream, each checked against the SDK's event types and numbered from 0."""
    events = []
    for block in b"".join(chunks).decode().split("\n\n")[:-1]:
        kind, data = block.split("\n")
        event = sdk_event(data.removeprefix("data: "))
        assert kind == f"event: {event.type}"
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


def step(events: list, tokens: int, finish_reason: str | None = None) -> Update:
    """An Update of choice 0 that brings the choice to `tokens` tokens."""
    return Update(0, events, [0], tokens, finish_reason)


def run(writer: ResponseWriter, updates: list[Update]):
    """A streamed run as frontend.run.answer.rendered drives it: its events and the response they end with."""
    chunks = [chunk for update in updates for chunk in writer.update(update)] + writer.last() + writer.end()
    return events_of(chunks), Response.model_validate_json(msgspec.json.encode(writer.response))


def writer(stream: bool = True, forced: bool = False, **fields) -> ResponseWriter:
    return ResponseWriter(request(**fields), "m", prompt_tokens=7, forced=forced, stream=stream)


def test_a_streamed_answer_makes_openais_event_sequence():
    events, response = run(writer(), [step([Content("Hel")], 1), step([Content("lo")], 2, "stop")])
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hel", "lo"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[2].item.status == "in_progress" and events[8].item.status == "completed"
    assert events[-1].response == response
    assert response.status == "completed" and response.output_text == "Hello" and response.store is False
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 2, 9)


def test_the_whole_answer_is_the_same_response_without_events():
    plain = writer(stream=False)
    plain.take(step([Content("Hello")], 1, "stop"))
    response = Response.model_validate_json(msgspec.json.encode(plain.finish()))
    assert response.output_text == "Hello" and plain.events is None


def test_reasoning_comes_as_its_own_item_before_the_message():
    events, response = run(writer(), [
        step([Reasoning("Think")], 1), step([Reasoning("ing."), Content("\n\n")], 2),
        step([Content("Yes.")], 3, "stop")])
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "Thinking." and response.output_text == "\n\nYes."
    assert [e.type for e in events if e.type.startswith("response.reasoning_text")] == [
        "response.reasoning_text.delta", "response.reasoning_text.delta", "response.reasoning_text.done"]


def test_tool_calls_are_function_call_items_and_whitespace_between_them_no_message():
    first, second = ToolCall("weather", '{"city": "Paris"}'), ToolCall("time", "{}")
    events, response = run(writer(tools=[{"type": "function", "name": "weather"}]), [
        step([first, Content("\n")], 3), step([second, Content("\n")], 5, "stop")])
    assert [(item.type, item.name, item.arguments, item.call_id, item.status) for item in response.output] == [
        ("function_call", "weather", '{"city": "Paris"}', first.id, "completed"),
        ("function_call", "time", "{}", second.id, "completed")]
    assert [e.type for e in events[2:6]] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done"]
    assert events[2].item.arguments == "" and events[2].item.status == "in_progress"
    assert events[4].arguments == first.arguments and response.tools[0].name == "weather"


def test_text_around_calls_opens_a_message_where_it_stands():
    call = ToolCall("f", "{}")
    _, response = run(writer(), [step([Content("Sure. "), call, Content(" Done.")], 4, "stop")])
    assert [item.type for item in response.output] == ["message", "function_call", "message"]
    assert response.output_text == "Sure.  Done."


def test_max_output_tokens_makes_an_incomplete_response():
    events, response = run(writer(max_output_tokens=2), [step([Content("Once upon")], 2, "length")])
    assert events[-1].type == "response.incomplete"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.max_output_tokens == 2


def test_an_empty_answer_is_an_empty_message_but_a_forced_call_cut_short_is_no_item():
    _, response = run(writer(), [step([], 1, "stop")])
    assert [item.type for item in response.output] == ["message"] and response.output_text == ""
    _, forced = run(writer(forced=True), [step([], 3, "length")])
    assert forced.output == [] and forced.status == "incomplete"


def test_the_request_is_echoed_in_the_response():
    _, response = run(writer(instructions="Be brief.", temperature=0.5, top_p=0.9, metadata={"k": "v"}, store=True,
                             text={"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}}}),
                      [step([Content("{}")], 1, "stop")])
    assert (response.instructions, response.temperature, response.top_p) == ("Be brief.", 0.5, 0.9)
    assert response.metadata == {"k": "v"} and response.store is False
    assert response.text.format.type == "json_schema" and response.text.format.name == "city"


def test_a_failure_mid_stream_is_an_error_event_then_response_failed():
    failing = writer()
    events = events_of(failing.update(step([Content("Hel")], 1)) + failing.error(HTTPError(503, "engine lost")))
    assert [event.type for event in events][-2:] == ["error", "response.failed"]
    assert events[-2].message == "engine lost" and events[-1].response.error.code == "server_error"


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": 12}}]}, "tools[0].parameters"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_object"}}, "structured_outputs": {"regex": "a+"}}, "structured_outputs"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
      "text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
])
def test_the_tool_plan_names_the_responses_fields(fields, param):
    with pytest.raises(HTTPError) as caught:
        tool_plan(request(**fields), "hermes", 8)
    assert caught.value.param == param


def test_the_format_grammar_is_the_schema_or_a_json_object():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    plan = tool_plan(request(text={"format": {"type": "json_schema", "name": "a", "schema": schema}}), "hermes", 8)
    assert plan.grammar["json"] == schema and not plan.forced
    assert tool_plan(request(text={"format": {"type": "json_object"}}), "", 8).grammar["json_object"] is True
    assert tool_plan(request(), "", 8).grammar is None
