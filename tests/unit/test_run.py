"""The one generation run's Choice and the protocol-neutral ToolPlan, without an engine."""
import json

import pytest

from frontend.http import HTTPError
from frontend.run.choices import Choice
from frontend.run.generation import Piece
from frontend.text.reasoning import Content, Reasoning
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import FunctionTool, ToolPlan

WEATHER = FunctionTool("weather", "today's weather", {"type": "object", "properties": {"city": {"type": "string"}}})
CLOCK = FunctionTool("clock")


def plan(choice: str, tools=(WEATHER, CLOCK), parallel=True, format_grammar=None, tool_parser="hermes") -> ToolPlan:
    return ToolPlan(list(tools), choice, parallel, format_grammar, tool_parser, max_schema_depth=16)


def test_a_choice_accumulates_its_pieces_and_reports_what_each_adds():
    choice = Choice(2)
    first = choice.take(Piece("Hello", [1, 2]))
    last = choice.take(Piece(" world", [3], "length"))
    assert (first.index, first.events, first.completion_tokens, first.finish_reason) == (2, [Content("Hello")], 2, None)
    assert (last.events, last.token_ids, last.completion_tokens, last.finish_reason) == ([Content(" world")], [3], 3,
                                                                                         "length")
    assert (choice.content, choice.token_ids, choice.finish_reason, choice.tool_calls) == ("Hello world", [1, 2, 3],
                                                                                           "length", [])


def test_a_required_tool_call_is_read_once_its_json_is_complete():
    choice = Choice(0, plan("required").reader())
    text = json.dumps([{"name": "weather", "arguments": {"city": "Oslo"}}])
    assert choice.take(Piece(text[:20], [1])).events == []
    [call] = choice.take(Piece(text[20:], [2], "stop")).events
    assert (call.name, json.loads(call.arguments)) == ("weather", {"city": "Oslo"})
    assert choice.tool_calls == [call] and choice.content == ""


def test_auto_tool_calls_come_from_the_tool_parser_between_content():
    choice = Choice(0, plan("auto").reader())
    text = 'Let me look.<tool_call>{"name": "clock", "arguments": {}}</tool_call>'
    events = choice.take(Piece(text, [1], "stop")).events
    assert Content("Let me look.") in events
    assert [e.name for e in events if isinstance(e, ToolCall)] == ["clock"]


class FakeThinkParser:
    """A fake reasoning parser, for this test only: everything before "|" is reasoning."""

    def __init__(self):
        self.thinking = True

    def feed(self, text: str) -> list:
        if not self.thinking:
            return [Content(text)]
        thought, bar, rest = text.partition("|")
        self.thinking = not bar
        return [Reasoning(thought)] + ([Content(rest)] if bar and rest else [])

    def finish(self) -> list:
        return []


def test_reasoning_goes_by_the_tool_reader_and_content_through_it():
    choice = Choice(0, plan("none", format_grammar={"json_object": True}).reader(), reasoning_parser=FakeThinkParser())
    update = choice.take(Piece('hmm|{"a": "b\nc"}', [1], "stop"))
    assert update.events == [Reasoning("hmm"), Content('{"a": "b\\nc"}')]
    assert (choice.reasoning, choice.content) == ("hmm", '{"a": "b\\nc"}')


def test_a_named_function_constrains_the_output_to_its_arguments():
    named = plan("weather")
    assert named.forced and named.grammar["json"] == WEATHER.parameters
    assert Choice(0, named.reader()).take(Piece('{"city": "Rome"}', [1], "stop")).events[0].name == "weather"


def test_required_tools_allow_one_call_unless_parallel():
    assert plan("required", parallel=False).grammar["json"]["maxItems"] == 1
    assert "maxItems" not in plan("required").grammar["json"]


@pytest.mark.parametrize("choice, kwargs, field", [
    ("sunshine", {}, "tool_choice"),
    ("required", {"format_grammar": {"json_object": True}}, "response_format"),
    ("auto", {"tool_parser": ""}, "tool_choice"),
    ("none", {"tools": [FunctionTool("bad", parameters={"type": 12})]}, "tools[0].function.parameters"),
])
def test_a_plan_that_cannot_hold_is_a_400_naming_the_field(choice, kwargs, field):
    with pytest.raises(HTTPError) as raised:
        plan(choice, **kwargs)
    assert (raised.value.status, raised.value.param) == (400, field)
