"""Anthropic Messages without an engine: request bodies into chat requests, and answers built
block by block into events and a whole Message, checked against the official SDK's own types."""
import json

import anthropic
import httpx
import httpx2
import msgspec
import pytest
from anthropic import AsyncAnthropic
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SdkMessage
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.config import RequestLimits
from frontend.anthropic.messages import (
    MessageBuilder, as_chat, check_bounds, check_tools, sampling_of, tool_plan,
)
from frontend.anthropic.protocol import CountTokensRequest, MessagesRequest, error_body
from frontend.anthropic.routes import anthropic_route
from frontend.anthropic.sse import error_event, event
from frontend.app import error_handlers
from frontend.auth import ApiKeyMiddleware
from frontend.engine_client import EngineLost
from frontend.http import HTTPError
from frontend.run.answer import rendered
from frontend.run.choices import Choice, Update
from frontend.run.generation import Piece
from frontend.text.reasoning import Content, Reasoning, make_reasoning_parser
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import PlainText

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def request(**fields) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return msgspec.json.decode(json.dumps(body), type=MessagesRequest)


def decode_error(body: dict, kind=MessagesRequest) -> str:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(json.dumps(body), type=kind)
    return str(raised.value)


def test_max_tokens_is_required_as_anthropic_requires():
    assert "max_tokens" in decode_error({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})


def test_count_tokens_takes_no_max_tokens():
    body = msgspec.json.decode(b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}]}',
                               type=CountTokensRequest)
    assert [(m.role, m.content) for m in as_chat(body).messages] == [("user", "Hi")]


def test_an_unsupported_block_is_named():
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": ""}}
    message = decode_error({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [document]}]})
    assert "messages[0].content[0]" in message


def test_system_string_and_blocks():
    for system in ("Be brief.", [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]):
        messages = as_chat(request(system=system)).messages
        assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "Hi")]


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages():
    body = request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "use the tool", "signature": "x"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such city", "is_error": True},
            {"type": "text", "text": "And tomorrow?"}]},
    ])
    messages = as_chat(body).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assistant = messages[1]
    assert assistant.content == "Let me look."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in assistant.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"})]
    assert (messages[2].tool_call_id, messages[2].content) == ("toolu_1", "sunny")
    assert (messages[3].tool_call_id, messages[3].content) == ("toolu_2", "Error: no such city")
    assert messages[4].content == "And tomorrow?"


def test_an_assistant_message_last_is_continued():
    prefilled = [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "The best answer is ("}]
    assert as_chat(request(messages=prefilled)).continue_final_message
    assert not as_chat(request()).continue_final_message


def test_a_block_in_the_wrong_role_is_named():
    body = request(messages=[{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}])
    with pytest.raises(HTTPError) as raised:
        as_chat(body)
    assert (raised.value.status, raised.value.param) == (400, "messages[0].content[0]")


@pytest.mark.parametrize("choice, expected, one_call", [
    (None, "auto", False),
    ({"type": "auto"}, "auto", False),
    ({"type": "any"}, "required", False),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", True),
    ({"type": "tool", "name": "get_weather"}, "get_weather", False),
    ({"type": "none"}, "none", False),
])
def test_tool_choice(choice, expected, one_call):
    plan = tool_plan(request(tools=[WEATHER], tool_choice=choice), "hermes", 64)
    assert plan.choice == expected
    if expected == "required":
        assert (plan.grammar["json"].get("maxItems") == 1) == one_call
    assert as_chat(request(tools=[WEATHER])).tools[0].function.parameters == WEATHER["input_schema"]


def test_tool_choice_names_the_field():
    for fields in (dict(tool_choice={"type": "any"}), dict(tools=[WEATHER], tool_choice={"type": "tool", "name": "x"})):
        with pytest.raises(HTTPError) as raised:
            tool_plan(request(**fields), "hermes", 64)
        assert raised.value.param == "tool_choice"


def test_sampling_fields_carry_over():
    body = request(temperature=0.5, top_p=0.9, top_k=5, stop_sequences=["END"], metadata={"u": 1})
    assert sampling_of(body, None) == {"temperature": 0.5, "top_p": 0.9, "top_k": 5, "max_tokens": 16}
    assert sampling_of(request(), {"json": {}}) == {"max_tokens": 16, "structured_outputs": {"json": {}}}


def test_temperature_in_anthropic_range():
    assert "temperature" in decode_error({"model": "m", "max_tokens": 4, "temperature": 1.5,
                                          "messages": [{"role": "user", "content": "Hi"}]})


def test_input_schema_must_be_an_object_schema():
    with pytest.raises(HTTPError) as raised:
        check_tools(request(tools=[{**WEATHER, "input_schema": {"type": "string"}}]), 64)
    assert raised.value.param == "tools[0].input_schema.type"
    with pytest.raises(HTTPError) as raised:
        check_tools(request(tools=[{**WEATHER, "input_schema": {"type": "object", "required": 3}}]), 64)
    assert raised.value.param == "tools[0].input_schema"


def test_limits_name_the_field():
    limits = RequestLimits(max_stop_strings=2, max_stop_string_chars=4, max_tools=1)
    cases = [(dict(stop_sequences=["a", "b", "c"]), "stop_sequences"),
             (dict(stop_sequences=["a", "toolong"]), "stop_sequences[1]"),
             (dict(tools=[WEATHER, {**WEATHER, "name": "other"}]), "tools")]
    for fields, field in cases:
        with pytest.raises(HTTPError) as raised:
            check_bounds(request(**fields), limits)
        assert raised.value.param == field


SDK_EVENT = TypeAdapter(RawMessageStreamEvent)


def accumulated(events: list) -> SdkMessage:
    """The Message the SDK's own stream accumulator makes of the events, as it reads them off the wire."""
    snapshot, buffers = None, {}
    for item in events:
        frame = event(item).decode()
        name, data = frame.split("\n")[:2]
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        if payload["type"] != "ping":
            snapshot = accumulate_event(event=SDK_EVENT.validate_python(payload), current_snapshot=snapshot,
                                        json_bufs=buffers)
    return snapshot


def build(steps) -> tuple[MessageBuilder, list]:
    """Each step one Update of the run: ("text" | "thinking" | "tool_use", …), and
    ("finish", (finish_reason, stop_reason, completion_tokens)) last."""
    builder = MessageBuilder("m", 7)
    events = builder.start()
    made = {"text": Content, "thinking": Reasoning, "tool_use": lambda call: call}
    for kind, value in steps:
        if kind == "finish":
            finish_reason, stop_reason, tokens = value
            events += builder.take(Update(0, [], [], tokens, finish_reason, stop_reason=stop_reason))
        else:
            events += builder.take(Update(0, [made[kind](value)], [1], 0))
    return builder, events


def types_of(events: list) -> list[str]:
    return [type(item).__struct_config__.tag for item in events]


def test_text_then_tool_use_stream_and_whole_agree_with_the_sdk():
    call = ToolCall("get_weather", '{"city": "Paris"}', id="call_abc")
    builder, events = build([("thinking", "\n"), ("thinking", "hmm"), ("text", "\n\n"), ("text", "Let me"),
                             ("text", " look."), ("tool_use", call), ("text", "\n"), ("finish", ("stop", None, 9))])
    assert types_of(events) == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    whole = SdkMessage.model_validate(msgspec.to_builtins(builder.message()))
    assert [block.type for block in whole.content] == ["thinking", "text", "tool_use"]
    assert whole.content[0].thinking == "\nhmm"
    assert whole.content[1].text == "\n\nLet me look."
    assert (whole.content[2].id, whole.content[2].name, whole.content[2].input) == (
        "toolu_abc", "get_weather", {"city": "Paris"})
    assert (whole.stop_reason, whole.usage.input_tokens, whole.usage.output_tokens) == ("tool_use", 7, 9)
    streamed = accumulated(events)
    assert streamed.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})
    assert streamed.id == whole.id


@pytest.mark.parametrize("finish, stop, called, reason", [
    ("stop", None, False, "end_turn"), ("length", None, False, "max_tokens"),
    ("stop", "END", False, "stop_sequence"), ("stop", None, True, "tool_use"), ("length", None, True, "max_tokens"),
    ("stop", 2, False, "end_turn"),  # a stop token id is no stop sequence
])
def test_stop_reasons(finish, stop, called, reason):
    steps = [("text", "hi")] + ([("tool_use", ToolCall("f", "{}"))] if called else [])
    builder, events = build(steps + [("finish", (finish, stop, 3))])
    message = builder.message()
    sequence = stop if isinstance(stop, str) else None
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)
    assert accumulated(events).stop_sequence == sequence


def test_whitespace_no_block_takes_is_dropped():
    builder, events = build([("text", "  "), ("finish", ("stop", None, 1))])
    assert builder.message().content == []
    assert types_of(events) == ["message_start", "ping", "message_delta", "message_stop"]


def test_arguments_that_are_not_an_object_become_an_empty_input():
    builder, _ = build([("tool_use", ToolCall("f", '"just text"')), ("finish", ("stop", None, 1))])
    assert builder.message().content[0].input == {}


def test_errors_in_anthropic_shape_name_the_field():
    body = msgspec.to_builtins(error_body(400, "must be at most 1.0", "temperature"))
    assert body == {"type": "error", "error": {"type": "invalid_request_error",
                                               "message": "temperature: must be at most 1.0"}}
    assert msgspec.to_builtins(error_body(503, "busy"))["error"]["type"] == "overloaded_error"
    frame = error_event(HTTPError(504, "took too long")).decode()
    assert frame.startswith("event: error\ndata: ") and frame.endswith("\n\n")
    assert json.loads(frame.split("data: ")[1])["error"] == {"type": "timeout_error", "message": "took too long"}


async def test_a_failure_mid_stream_ends_it_with_an_error_event():
    async def updates():
        yield Update(0, [Content("Hello")], [1], 1)
        raise EngineLost("the engine went away")

    frames = [frame.decode() async for frame in rendered(updates(), MessageBuilder("m", 3).renderer())]
    names = [frame.split("\n")[0].removeprefix("event: ") for frame in frames]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert json.loads(frames[-1].split("\n")[1].removeprefix("data: ")) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "the engine went away"}}


def keyed_app(key: str):
    """The API key middleware in front of a route that only counts (a stand-in for the real routes)."""
    async def counted(request):
        return JSONResponse({"input_tokens": 3})

    app = Starlette(routes=[Route("/v1/messages/count_tokens", counted, methods=["POST"])])
    return ApiKeyMiddleware(app, key)


def sdk_client(key: str) -> AsyncAnthropic:
    # The SDK brings its own httpx fork, and takes only its clients.
    transport = httpx2.ASGITransport(app=keyed_app("s3cret"))
    return AsyncAnthropic(api_key=key, base_url="http://frontend", max_retries=0,
                          http_client=httpx2.AsyncClient(transport=transport, base_url="http://frontend"))


async def test_the_sdk_authenticates_with_x_api_key():
    counted = await sdk_client("s3cret").messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert counted.input_tokens == 3
    with pytest.raises(anthropic.AuthenticationError) as raised:
        await sdk_client("wrong").messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert raised.value.body["error"]["type"] == "authentication_error"


async def test_bearer_still_works_and_other_routes_keep_their_shape():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyed_app("s3cret")), base_url="http://f") as http:
        answer = await http.post("/v1/messages/count_tokens", headers={"authorization": "Bearer s3cret"}, json={})
        assert answer.status_code == 200
        refused = await http.post("/v1/chat/completions", headers={"x-api-key": "wrong"}, json={})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert "code" in refused.json()["error"]  # OpenAI's shape


async def test_a_route_error_takes_the_shape_of_its_path():
    async def refuse(request):
        raise HTTPError(400, "too hot", "temperature")

    routes = [anthropic_route("/v1/messages", refuse), Route("/v1/completions", refuse, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers=error_handlers())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as http:
        anthropic_error = await http.post("/v1/messages", json={})
        openai_error = await http.post("/v1/completions", json={})
        not_post = await http.get("/v1/messages")
    assert anthropic_error.status_code == 400 and anthropic_error.json() == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "temperature: too hot"}}
    assert openai_error.status_code == 400 and openai_error.json()["error"]["param"] == "temperature"
    assert not_post.status_code == 405 and not_post.headers["allow"] == "POST"
    assert not_post.json()["error"]["type"] == "invalid_request_error" and not_post.json()["type"] == "error"


def test_thinking_from_the_reasoning_parser_becomes_a_thinking_block():
    choice = Choice(0, PlainText(), make_reasoning_parser("qwen3"))
    builder = MessageBuilder("m", 5)
    events = builder.start()
    for text, finish in (("<think>Let me", None), (" think.</think>", None), ("The answer.", "stop")):
        events += builder.take(choice.take(Piece(text, [1], finish)))
    whole = SdkMessage.model_validate(msgspec.to_builtins(builder.message()))
    assert [(block.type, getattr(block, "thinking", None) or block.text) for block in whole.content] == [
        ("thinking", "Let me think."), ("text", "The answer.")]
    assert accumulated(events).model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})
