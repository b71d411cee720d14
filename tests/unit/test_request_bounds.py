"""Request bounds, deep-body field finding, the chat template deadline and the reading of tool
calls cut by max_tokens: plain functions, no engine."""
import json
import sys
import time

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.config import RequestLimits
from frontend.http import HTTPError, deepest_field
from frontend.openai.sampling import token_biases
from frontend.request_bounds import (
    check_depth, check_generations, check_logit_bias, check_seed, check_stop_strings, check_token_ids, depth_of,
)
from frontend.text.chat_template import TemplateTimeout, deadline_tracer
from frontend.text.structured_outputs import ForcedToolCalls, JsonArrayElements
from frontend.text.tool_parsers import ToolCall

LIMITS = RequestLimits()
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
VOCAB = 8192


def refusal(check, *args) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        check(*args)
    assert caught.value.status == 400
    return caught.value


def test_seeds_must_stay_in_int64_for_every_choice():
    check_seed(2**63 - 1)
    check_seed(-(2**63), 5)
    check_seed(2**63 - 128, 128)
    assert refusal(check_seed, 2**63).param == "seed"
    assert refusal(check_seed, -(2**63) - 1).param == "seed"
    assert "n=2" in refusal(check_seed, 2**63 - 1, 2).message
    assert refusal(check_seed, 2**64 - 1, 1).param == "seed"


@pytest.mark.parametrize("token_id", [-1, VOCAB, 2**32, 10**23])
def test_token_ids_outside_the_vocabulary_are_refused(token_id):
    check_token_ids([0, 5, VOCAB - 1], VOCAB, "stop_token_ids")
    error = refusal(check_token_ids, [1, token_id], VOCAB, "stop_token_ids")
    assert error.param == "stop_token_ids" and str(token_id) in error.message


def test_logit_bias_keys_are_token_ids_in_the_vocabulary():
    check_logit_bias({"5": 1.0, "7": -100}, VOCAB, LIMITS)
    check_logit_bias({5: 1.0}, VOCAB, LIMITS)
    assert token_biases({"5": 1.0, "7": -100}) == {5: 1.0, 7: -100}  # as they go to vLLM
    for key in (str(10**23), "-1", "abc", "1e3", str(VOCAB)):
        assert refusal(check_logit_bias, {key: 1.0}, VOCAB, LIMITS).param == "logit_bias"
    many = {str(i): 0.0 for i in range(LIMITS.max_logit_bias + 1)}
    assert "limit" in refusal(check_logit_bias, many, VOCAB, LIMITS).message


def test_stop_strings_are_bounded_in_number_and_length():
    check_stop_strings(["a"] * LIMITS.max_stop_strings, LIMITS)
    assert refusal(check_stop_strings, ["a"] * 75_000, LIMITS).param == "stop"
    assert refusal(check_stop_strings, ["x" * (LIMITS.max_stop_string_chars + 1)], LIMITS).param == "stop"


def test_prompts_times_n_is_bounded_before_any_generation_exists():
    check_generations(2, 128, LIMITS)
    error = refusal(check_generations, 20_000, 128, LIMITS)
    assert error.param == "prompt" and "20000" in error.message
    error = refusal(check_generations, 3, 128, LIMITS)
    assert error.param == "n" and "384" in error.message


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_depth_is_counted_without_recursion_and_stops_early():
    assert depth_of(1, 10) == 0
    assert depth_of([], 10) == 1
    assert depth_of({"a": [{"b": 1}]}, 10) == 3
    deep: list = []
    for _ in range(50_000):  # far past Python's recursion limit
        deep = [deep]
    assert depth_of(deep, 64) == 65
    check_depth(nested(20), 64, "tools")
    assert refusal(check_depth, nested(200), 64, "tools[0].function.parameters").param == "tools[0].function.parameters"


def test_a_body_too_deep_to_decode_still_names_its_field():
    deep = "[" * 50_000 + "]" * 50_000
    body = f'{{"messages": [{{"role": "user", "content": "[[[{{"}}], "response_format": {deep}, "n": 1}}'
    assert deepest_field(body.encode()) == "response_format"
    assert deepest_field(b'{"a": "]]]]", "b\\"": [[[]]]}') == 'b"'
    assert deepest_field(b"[[[[]]]]") == "body"


def test_a_template_loop_is_stopped_at_the_deadline():
    template = ImmutableSandboxedEnvironment().from_string(LOOP + "done")
    started = time.monotonic()
    sys.settrace(deadline_tracer(time.monotonic() + 0.2))
    try:
        with pytest.raises(TemplateTimeout):
            template.render()
    finally:
        sys.settrace(None)
    assert time.monotonic() - started < 5
    assert ImmutableSandboxedEnvironment().from_string("{{ 1 + 1 }}").render() == "2"


CALLS = [{"name": "get_weather", "arguments": {"city": "Pa]ris\"{", "days": 3}},
         {"name": "get_time", "arguments": {"zone": "UTC"}}]


def feed_in_pieces(reader, text: str, size: int) -> list:
    events = []
    for start in range(0, len(text), size):
        events += reader.feed(text[start:start + size])
    return events + reader.finish()


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_required_tool_calls_come_out_as_each_completes(size):
    events = feed_in_pieces(ForcedToolCalls(), json.dumps(CALLS), size)
    assert events == [ToolCall("get_weather", json.dumps(CALLS[0]["arguments"]), events[0].id),
                      ToolCall("get_time", '{"zone": "UTC"}', events[1].id)]


@pytest.mark.parametrize("cut", [1, 30, 60, len(json.dumps(CALLS[0])) + 5, len(json.dumps(CALLS)) - 2])
def test_a_call_cut_by_max_tokens_is_dropped_and_never_content(cut):
    text = json.dumps(CALLS)[:cut]
    events = feed_in_pieces(ForcedToolCalls(), text, 4)
    complete = 1 if cut > len("[" + json.dumps(CALLS[0])) else 0
    assert [event.name for event in events] == ["get_weather"] * complete
    assert all(isinstance(event, ToolCall) for event in events)


def test_a_named_call_is_read_whole_or_dropped_when_cut():
    whole = feed_in_pieces(ForcedToolCalls("get_time"), '{"zone": "UTC"}', 2)
    assert [(call.name, call.arguments) for call in whole] == [("get_time", '{"zone": "UTC"}')]
    assert feed_in_pieces(ForcedToolCalls("get_time"), '{"zone": "UT', 2) == []


def test_array_elements_skip_scalars_and_survive_a_runaway_nesting():
    reader = JsonArrayElements()
    assert reader.feed('[1, "a{", {"x": [1]}, [2], true') == [{"x": [1]}, [2]]
    runaway = JsonArrayElements()
    assert runaway.feed("[" + "[" * 5000 + "]" * 5000 + ", {}]") == [{}]


def chat(**fields):
    from frontend.text.chat import Chat, ChatMessage

    return Chat(messages=[ChatMessage("user", "hi")], **fields)


async def test_request_chat_templates_are_refused_unless_trusted(tokenizer):
    from common.config import ServerConfig
    from frontend.text.chat_template import chat_prompt_ids

    kwargs_template = dict(chat_template_kwargs={"chat_template": "{{ 'x' }}"})
    for fields, param in ((dict(chat_template="{{ 'x' }}"), "chat_template"),
                          (kwargs_template, "chat_template_kwargs.chat_template")):
        with pytest.raises(HTTPError) as raised:
            await chat_prompt_ids(tokenizer, chat(**fields), ServerConfig())
        assert raised.value.param == param and "trust_request_chat_template" in raised.value.message
    trusting = ServerConfig(trust_request_chat_template=True)
    assert await chat_prompt_ids(tokenizer, chat(chat_template="hello"), trusting) == tokenizer.encode("hello")


async def test_a_trusted_template_is_stopped_in_time_and_bounded_in_output(tokenizer):
    from common.config import ServerConfig
    from frontend.text.chat_template import chat_prompt_ids

    server = ServerConfig(trust_request_chat_template=True,
                          limits=RequestLimits(chat_template_timeout_s=0.3, max_chat_prompt_chars=10_000))
    with pytest.raises(HTTPError) as raised:
        await chat_prompt_ids(tokenizer, chat(chat_template=LOOP), server)
    assert raised.value.param == "chat_template" and "0.3 s" in raised.value.message
    big = "{% for i in range(20000) %}xy{% endfor %}"
    with pytest.raises(HTTPError) as raised:
        await chat_prompt_ids(tokenizer, chat(chat_template=big), server)
    assert raised.value.param == "chat_template" and "40000 characters" in raised.value.message

