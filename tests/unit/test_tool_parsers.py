"""Tool-call parsers and grammar-output readers on crafted text, whole and streamed in pieces
that split tags, JSON and separators anywhere."""
import json

import pytest

from frontend.text.structured_outputs import ForcedToolCalls, JsonText
from frontend.text.tool_parsers import HermesToolParser, Llama3JsonToolParser, ToolCall, parse_text


def streamed(parser, text: str, size: int) -> list:
    """Feed `text` in pieces of `size` characters; adjacent content strings merged."""
    events = []
    for start in range(0, len(text), size):
        events += parser.feed(text[start:start + size])
    events += parser.finish()
    return merge_content(events)


def merge_content(events: list) -> list:
    merged = []
    for event in events:
        if isinstance(event, str) and merged and isinstance(merged[-1], str):
            merged[-1] += event
        elif not (isinstance(event, str) and not event):
            merged.append(event)
    return merged


def shape(events: list) -> list:
    """Calls as (name, arguments object), so ids and JSON spacing do not matter."""
    return [(e.name, json.loads(e.arguments)) if isinstance(e, ToolCall) else e for e in events]


HERMES_CASES = [
    ("plain text", "Just an answer, no calls.", ["Just an answer, no calls."]),
    ("one call", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
     [("get_weather", {"city": "Paris"})]),
    ("content around calls",
     'Let me check.\n<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
     '<tool_call>{"name": "b", "arguments": {}}</tool_call> done',
     ["Let me check.\n", ("a", {"x": 1}), "\n", ("b", {}), " done"]),
    ("a less-than that is no tag", "1 < 2 and <tool is not <tool_call", ["1 < 2 and <tool is not <tool_call"]),
    ("invalid JSON in the tag stays text", "<tool_call>{not json}</tool_call>", ["<tool_call>{not json}</tool_call>"]),
    ("missing closing tag, complete call", '<tool_call>{"name": "f", "arguments": {"q": "x"}}',
     [("f", {"q": "x"})]),
    ("missing closing tag, cut call", '<tool_call>{"name": "f", "argu', ['<tool_call>{"name": "f", "argu']),
    ("raw newline inside a JSON string", '<tool_call>{"name": "f", "arguments": {"t": "a\nb"}}</tool_call>',
     [("f", {"t": "a\nb"})]),
    ("parameters instead of arguments", '<tool_call>{"name": "f", "parameters": {"k": true}}</tool_call>',
     [("f", {"k": True})]),
]


@pytest.mark.parametrize("name,text,expected", HERMES_CASES, ids=[case[0] for case in HERMES_CASES])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_hermes_whole_and_streamed_in_any_pieces(name, text, expected, size):
    assert shape(streamed(HermesToolParser(), text, size)) == expected


def test_hermes_holds_back_only_what_could_be_a_tag():
    parser = HermesToolParser()
    assert parser.feed("Hello <tool_") == ["Hello "]
    assert parser.feed("x") == ["<tool_x"]
    assert parser.feed(" <") == [" "]
    assert parser.feed("tool_call>") == []
    events = parser.feed('{"name": "f", "arguments": {}}</tool_call>')
    assert shape(events) == [("f", {})]


def test_hermes_call_ids_are_unique():
    content, calls = parse_text(HermesToolParser(), '<tool_call>{"name": "f", "arguments": {}}</tool_call>' * 3)
    assert content == ""
    assert len({call.id for call in calls}) == 3
    assert all(call.id.startswith("call_") for call in calls)


LLAMA3_CASES = [
    ("plain text", "The weather is fine.", ["The weather is fine."]),
    ("one call", '{"name": "get_weather", "parameters": {"city": "Oslo"}}', [("get_weather", {"city": "Oslo"})]),
    ("python tag", '<|python_tag|>{"name": "f", "parameters": {"n": 2}}', [("f", {"n": 2})]),
    ("leading whitespace", '\n  {"name": "f", "arguments": {}}', [("f", {})]),
    ("several calls", '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"z": [1, 2]}}',
     [("a", {}), ("b", {"z": [1, 2]})]),
    ("JSON that is not a call", '{"answer": 42}', ['{"answer": 42}']),
    ("cut call", '{"name": "f", "parameters": {"x"', ['{"name": "f", "parameters": {"x"']),
    ("text that mentions JSON", 'Use {"name": "f"} like this', ['Use {"name": "f"} like this']),
    ("text after a call", '{"name": "f", "parameters": {}} and more', [("f", {}), " and more"]),
]


@pytest.mark.parametrize("name,text,expected", LLAMA3_CASES, ids=[case[0] for case in LLAMA3_CASES])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_llama3_json_whole_and_streamed_in_any_pieces(name, text, expected, size):
    assert shape(streamed(Llama3JsonToolParser(), text, size)) == expected


def test_llama3_json_streams_each_call_as_soon_as_it_is_complete():
    parser = Llama3JsonToolParser()
    assert parser.feed('<|python_') == []
    assert shape(parser.feed('tag|>{"name": "a", "parameters": {}}; {"name"')) == [("a", {})]
    assert shape(parser.feed(': "b", "parameters": {}}')) == [("b", {})]
    assert parser.finish() == []


def test_llama3_json_plain_text_streams_at_once():
    parser = Llama3JsonToolParser()
    assert parser.feed("Hi") == ["Hi"]
    assert parser.feed(" there {") == [" there {"]


def test_forced_named_call_reads_arguments_leniently_and_reserializes():
    reader = ForcedToolCalls("get_weather")
    for piece in ['{"city":', '"Par\tis",', '"days":3}']:
        assert reader.feed(piece) == []
    [call] = reader.finish()
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Par\tis", "days": 3}


def test_forced_required_calls_from_an_array():
    reader = ForcedToolCalls()
    calls = reader.feed('[{"name":"a","arguments":{"x":1}},{"name":"b","arguments":{}}]') + reader.finish()
    assert shape(calls) == [("a", {"x": 1}), ("b", {})]


def test_forced_output_cut_by_max_tokens_keeps_the_complete_calls_and_is_never_content():
    reader = ForcedToolCalls()
    calls = reader.feed('[{"name":"a","arguments":{"x":1}},{"name":"b","argu') + reader.finish()
    assert shape(calls) == [("a", {"x": 1})]


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_json_text_escapes_control_characters_inside_strings_only(size):
    raw = '{"a":"line\none\ttab\x01","b\\"q":[1, 2],\n"c":"\\n"}'
    events = streamed(JsonText(), raw, size)
    text = "".join(events)
    assert json.loads(text) == json.loads(raw, strict=False)
    assert "\n" in text.split('"c"')[0][-3:]  # the newline between members is kept as it was
