"""Generated malformed JSON schemas through every piece of code that takes one from a request: the
schema check, and the tool plans of chat completions, Responses and Anthropic Messages, the grammar
of response_format and structured_outputs, and /tokenize's tool check. Each schema is either taken
or refused with a 400 naming the field; nothing else may escape (an escape is a 500)."""
import json

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.anthropic.messages import tool_plan as messages_tool_plan
from frontend.anthropic.protocol import MessagesRequest
from frontend.http import HTTPError
from frontend.openai.chat import tool_plan as chat_tool_plan
from frontend.openai.protocol import ChatCompletionRequest, CompletionRequest
from frontend.openai.responses import ResponsesRequest
from frontend.openai.responses import tool_plan as responses_tool_plan
from frontend.openai.sampling import requested_grammar
from frontend.openai.tokenize import TokenizeRequest, check_tool_schemas
from frontend.text.structured_outputs import check_schema

DIALECTS = [
    "http://json-schema.org/draft-03/schema#", "http://json-schema.org/draft-04/schema#",
    "http://json-schema.org/draft-06/schema#", "http://json-schema.org/draft-07/schema#",
    "https://json-schema.org/draft/2019-09/schema", "https://json-schema.org/draft/2020-12/schema",
]
KEYWORDS = [
    "$schema", "$defs", "definitions", "$ref", "$id", "id", "$anchor", "$dynamicRef", "$dynamicAnchor",
    "$recursiveRef", "$vocabulary", "type", "properties", "patternProperties", "additionalProperties",
    "items", "prefixItems", "additionalItems", "contains", "required", "enum", "const", "anyOf", "oneOf",
    "allOf", "not", "if", "then", "else", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "multipleOf", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "dependencies",
    "dependentSchemas", "dependentRequired", "propertyNames", "unevaluatedProperties", "default",
]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=8) | st.sampled_from(DIALECTS + ["object", "array", "string", "integer", "#", "#/$defs/a",
                                                                "(", "[a-", "*", "http://example.com/s"]))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYWORDS) | st.text(max_size=4), children, max_size=4),
    max_leaves=24,
)
SCHEMAS = st.dictionaries(st.sampled_from(KEYWORDS), VALUES, max_size=6)
CHOICES = st.sampled_from(["none", "auto", "required", "named"])
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def taken_or_refused(build, field: str) -> None:
    """`build()` returns, or raises a 400 whose param lies within `field`."""
    try:
        build()
    except HTTPError as error:
        assert error.status == 400, error.message
        assert error.param and error.param.startswith(field), (error.param, error.message)


def decode(kind: type, body: dict):
    return msgspec.json.decode(json.dumps(body), type=kind)


@FUZZ
@given(SCHEMAS)
def test_the_schema_check_takes_or_refuses(schema):
    taken_or_refused(lambda: check_schema(schema, 64, "f"), "f")
    taken_or_refused(lambda: check_schema(json.dumps(schema), 64, "f"), "f")


def tool_choice(choice: str, named: dict) -> str | dict:
    return named if choice == "named" else choice


@FUZZ
@given(SCHEMAS, SCHEMAS, CHOICES)
def test_chat_tools_and_response_format(parameters, other, choice):
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}},
             {"type": "function", "function": {"name": "g", "parameters": other}}]
    body = decode(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}], "tools": tools,
                                          "tool_choice": tool_choice(choice, {"type": "function",
                                                                              "function": {"name": "f"}})})
    taken_or_refused(lambda: chat_tool_plan(body, "hermes", 64), "tools[")
    body = decode(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"schema": parameters}}})
    taken_or_refused(lambda: chat_tool_plan(body, "hermes", 64), "response_format")


@FUZZ
@given(SCHEMAS)
def test_completions_structured_outputs(schema):
    for structured in (schema, json.dumps(schema)):
        body = decode(CompletionRequest, {"prompt": "hi", "structured_outputs": {"json": structured}})
        taken_or_refused(lambda: requested_grammar(body, 64), "structured_outputs")


@FUZZ
@given(SCHEMAS, SCHEMAS, CHOICES)
def test_responses_tools_and_text_format(parameters, other, choice):
    tools = [{"type": "function", "name": "f", "parameters": parameters},
             {"type": "function", "name": "g", "parameters": other}]
    body = decode(ResponsesRequest, {"input": "hi", "tools": tools,
                                     "tool_choice": tool_choice(choice, {"type": "function", "name": "f"})})
    taken_or_refused(lambda: responses_tool_plan(body, "hermes", 64), "tools[")
    body = decode(ResponsesRequest, {"input": "hi", "text": {"format": {"type": "json_schema", "schema": parameters}}})
    taken_or_refused(lambda: responses_tool_plan(body, "hermes", 64), "text.format")


@FUZZ
@given(SCHEMAS, SCHEMAS, CHOICES)
def test_messages_tools(input_schema, other, choice):
    tools = [{"name": "f", "input_schema": input_schema}, {"name": "g", "input_schema": other}]
    choices = {"none": {"type": "none"}, "auto": {"type": "auto"}, "required": {"type": "any"},
               "named": {"type": "tool", "name": "f"}}
    body = decode(MessagesRequest, {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
                                    "tools": tools, "tool_choice": choices[choice]})
    taken_or_refused(lambda: messages_tool_plan(body, "hermes", 64), "tools[")


@FUZZ
@given(SCHEMAS)
def test_tokenize_tools(parameters):
    body = decode(TokenizeRequest, {"messages": [{"role": "user", "content": "hi"}],
                                    "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]})
    taken_or_refused(lambda: check_tool_schemas(body.tools, 64), "tools[0]")


def test_the_schemas_the_issue_found_are_400s_naming_the_field():
    for schema in ({"$schema": 5}, {"$schema": ["x"]}, {"$schema": {"a": 1}}):
        taken_or_refused(lambda: check_schema(schema, 64, "f"), "f")
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object", "$defs": 5}
    body = decode(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required",
                                          "tools": [{"type": "function", "function": {"name": "f", "parameters": draft4}}]})
    try:
        chat_tool_plan(body, "hermes", 64)
        raise AssertionError("a draft-04 schema with a $defs of 5 was taken")
    except HTTPError as error:
        assert (error.status, error.param) == (400, "tools[0].function.parameters.$defs")
