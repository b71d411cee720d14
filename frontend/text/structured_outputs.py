"""Structured outputs: the grammar a request asks for, as plain data the engine turns into vLLM's
StructuredOutputsParams, and the reading of what the grammar produced.

Grammar-made JSON is read leniently: xgrammar lets raw control characters into strings (strict
parsers refuse them), and a free string may run into max_tokens. So JSON text is passed on with
those characters escaped, and tool-call arguments are parsed with strict=False and re-serialized.
"""
import json
from typing import Any

import jsonschema

from frontend.http import HTTPError
from frontend.openai.protocol import NamedToolChoice, ResponseFormat, SamplingRequest, StructuredOutputs, Tool
from frontend.request_bounds import check_depth
from frontend.text.tool_parsers import ToolCall

# Pads nothing between JSON tokens where the backend honours it per request; the engine-wide
# structured_outputs_config in conf/inference.yml does the same for vLLM versions that read it there.
COMPACT = {"disable_any_whitespace": True}


def requested_grammar(body: SamplingRequest, max_depth: int) -> dict | None:
    """The grammar from `response_format` or vLLM's `structured_outputs` extra, if any, its JSON
    schema checked (a worker thread's work: checking grows with the schema)."""
    from_format = response_format_grammar(body.response_format)
    from_extra = extra_grammar(body.structured_outputs)
    if from_format and from_extra:
        raise HTTPError(400, "give response_format or structured_outputs, not both", "structured_outputs")
    if from_format and "json" in from_format:
        check_schema(from_format["json"], max_depth, "response_format.json_schema.schema")
    if from_extra and "json" in from_extra:
        from_extra["json"] = check_schema(from_extra["json"], max_depth, "structured_outputs.json")
    return from_format or from_extra


def check_schema(schema: dict | str, max_depth: int, field: str) -> dict:
    """The schema as a dict, refused unless it is a valid JSON schema no deeper than `max_depth`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError):
            raise HTTPError(400, f"{field} is not valid JSON", field) from None
        if not isinstance(schema, dict):
            raise HTTPError(400, f"{field} must be a JSON object", field)
    check_depth(schema, max_depth, field)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise HTTPError(400, f"{field} is not a valid JSON schema: {error.message}", field) from None
    return schema


def response_format_grammar(response_format: ResponseFormat | None) -> dict | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"json_object": True, **COMPACT}
    if response_format.json_schema is None or response_format.json_schema.schema is None:
        raise HTTPError(400, "response_format of type json_schema needs json_schema.schema",
                        "response_format.json_schema")
    return {"json": response_format.json_schema.schema, **COMPACT}


def extra_grammar(extra: StructuredOutputs | None) -> dict | None:
    if extra is None:
        return None
    given = {name: getattr(extra, name) for name in extra.__struct_fields__ if getattr(extra, name) is not None}
    if len(given) != 1:
        raise HTTPError(400, "structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                        "structured_outputs")
    return {**given, **COMPACT} if is_json_grammar(given) else given


def is_json_grammar(grammar: dict | None) -> bool:
    return grammar is not None and ("json" in grammar or "json_object" in grammar)


def parameters_of(tool: Tool) -> dict:
    return tool.function.parameters or {"type": "object", "properties": {}}


def named_tool(tools: list[Tool], choice: NamedToolChoice) -> Tool:
    for tool in tools:
        if tool.function.name == choice.function.name:
            return tool
    raise HTTPError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools", "tool_choice")


def named_tool_grammar(tool: Tool) -> dict:
    """The output is the arguments object itself."""
    return {"json": parameters_of(tool), **COMPACT}


def required_tools_grammar(tools: list[Tool], parallel_tool_calls: bool | None) -> dict:
    """The output is a JSON array of {"name", "arguments"}, at least one, each for a given tool."""
    definitions, calls = {}, []
    for tool in tools:
        parameters = dict(parameters_of(tool))
        # $refs point at the root, so every tool's $defs move there.
        definitions.update(parameters.pop("$defs", {}))
        calls.append({
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [tool.function.name]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if definitions:
        schema["$defs"] = definitions
    return {"json": schema, **COMPACT}


def parse_lenient(text: str) -> Any:
    """The JSON value in `text`, raw control characters in strings allowed; None if it is not JSON."""
    try:
        return json.loads(text, strict=False)
    except (ValueError, RecursionError):  # a free-form object the model nested past Python's stack
        return None


def as_arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class JsonStrings:
    """Where JSON text that arrives one character at a time stands: inside a string or not."""

    def __init__(self):
        self.in_string = False
        self.escaped = False

    def step(self, char: str) -> bool:
        """Take one character; True when it stands outside every string (structure, not text)."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
            return False
        self.in_string = char == '"'
        return not self.in_string


class JsonText:
    """Streams grammar-made JSON on as it comes, escaping raw control characters inside strings."""

    def __init__(self):
        self.strings = JsonStrings()

    def feed(self, text: str) -> list:
        out = []
        for char in text:
            raw = self.strings.in_string and not self.strings.escaped and char < " "
            self.strings.step(char)
            out.append(json.dumps(char)[1:-1] if raw else char)
        return ["".join(out)] if out else []

    def finish(self) -> list:
        return []


class ForcedToolCalls:
    """Reads the output of a tool grammar: for `required`, a JSON array of calls, each call handed
    on as soon as its element is complete; for a named function, its arguments object, read once
    the output ends. Output cut by max_tokens loses only the call it cut: it never becomes content."""

    def __init__(self, function_name: str | None = None):
        self.function_name = function_name
        self.elements = JsonArrayElements()
        self.text = ""

    def feed(self, text: str) -> list:
        if self.function_name is not None:
            self.text += text
            return []
        return [as_call(element) for element in self.elements.feed(text) if is_call(element)]

    def finish(self) -> list:
        if self.function_name is None:
            return []
        value = parse_lenient(self.text)
        return [ToolCall(self.function_name, as_arguments(value))] if isinstance(value, dict) else []


def as_call(item: dict) -> ToolCall:
    return ToolCall(item["name"], as_arguments(item["arguments"]))


def is_call(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and "arguments" in item


class JsonArrayElements:
    """The complete object and array elements of a JSON array that arrives in pieces, each parsed
    (leniently) once its text is whole; each character is looked at once. Scalar elements are
    skipped: a tool call is an object."""

    def __init__(self):
        self.depth = 0  # 1 inside the array, more inside an element
        self.strings = JsonStrings()
        self.element: list[str] = []  # the text of the element being read

    def feed(self, text: str) -> list:
        complete = []
        for char in text:
            if self.depth >= 2:
                self.element.append(char)
            if not self.strings.step(char):
                continue
            if char in "[{":
                self.depth += 1
                if self.depth == 2:
                    self.element.append(char)
            elif char in "]}":
                self.depth -= 1
                if self.depth == 1:
                    complete.append(self.element_done())
        return [value for value in complete if value is not None]

    def element_done(self):
        text, self.element = "".join(self.element), []
        return parse_lenient(text)
