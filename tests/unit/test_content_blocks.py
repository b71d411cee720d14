"""Content blocks bounded per message and in all, on every protocol, before anything is built:
Anthropic's blocks (and those inside tool results) and system blocks, chat's content parts and tool
calls, Responses items' parts. Each past a bound is a 400 naming the message or the whole field."""
import json

import msgspec
import pytest

from common.config import RequestLimits
from frontend.anthropic import messages as anthropic_messages
from frontend.anthropic.protocol import CountTokensRequest
from frontend.http import HTTPError
from frontend.openai import responses
from frontend.openai.chat import check_messages
from frontend.openai.protocol import ChatCompletionRequest
from frontend.openai.responses import ResponsesRequest

LIMITS = RequestLimits(max_content_blocks_per_message=4, max_content_blocks=10)
TEXT = {"type": "text", "text": "a"}


def refused_field(check) -> str | None:
    try:
        check()
    except HTTPError as error:
        assert error.status == 400
        return error.param
    return None


def anthropic(messages, system=None):
    body = {"model": "m", "messages": messages, **({"system": system} if system else {})}
    return msgspec.json.decode(json.dumps(body), type=CountTokensRequest)


@pytest.mark.parametrize("messages, system, field", [
    ([{"role": "user", "content": [TEXT] * 4}], None, None),
    ([{"role": "user", "content": [TEXT] * 5}], None, "messages[0].content"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [TEXT] * 4}]}], None, "messages[1].content"),
    ([{"role": "user", "content": [TEXT] * 4}] * 3, None, "messages"),
    ([{"role": "user", "content": "hi"}], [TEXT] * 5, "system"),
])
def test_anthropic_blocks(messages, system, field):
    assert refused_field(lambda: anthropic_messages.check_bounds(anthropic(messages, system), LIMITS)) == field


@pytest.mark.parametrize("messages, field", [
    ([{"role": "user", "content": [TEXT] * 4}], None),
    ([{"role": "user", "content": [TEXT] * 5}], "messages[0]"),
    ([{"role": "assistant", "content": [TEXT] * 2,
       "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}] * 3}], "messages[0]"),
    ([{"role": "user", "content": [TEXT] * 4}] * 3, "messages"),
])
def test_chat_parts_and_tool_calls(messages, field):
    body = msgspec.json.decode(json.dumps({"messages": messages}), type=ChatCompletionRequest)
    assert refused_field(lambda: check_messages(body.messages, LIMITS)) == field


@pytest.mark.parametrize("items, field", [
    ([{"role": "user", "content": [{"type": "input_text", "text": "a"}] * 4}], None),
    ([{"role": "user", "content": [{"type": "input_text", "text": "a"}] * 5}], "input[0]"),
    ([{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "a"}] * 4}] * 3,
     "input"),
])
def test_responses_item_parts(items, field):
    body = msgspec.json.decode(json.dumps({"input": items}), type=ResponsesRequest)
    assert refused_field(lambda: responses.check_bounds(body, LIMITS, 8192)) == field
