"""Structured outputs: the grammar a request asks for, as plain data the engine turns into vLLM's
StructuredOutputsParams, and the reading of what the grammar produced.

Grammar-made JSON is read leniently: xgrammar lets raw control characters into strings (strict
parsers refuse them), and a free string may run into max_tokens. So JSON text is passed on with
those characters escaped, and tool-call arguments are parsed with strict=False and re-serialized.
"""
import json
from typing import Any

from frontend.http import HTTPError
from frontend.openai_protocol import NamedToolChoice, ResponseFormat, SamplingRequest, StructuredOutputs, Tool
from frontend.tool_parsers import ToolCall

# Pads nothing between JSON tokens where the backend honours it per request; the engine-wide
# structured_outputs_config in conf/inference.yml does the same for vLLM versions that read it there.
COMPACT = {"disable_any_whitespace": True}


def requested_grammar(body: SamplingRequest) -> dict | None:
    """The grammar from `response_format` or vLLM's `structured_outputs` extra, if any."""
    from_format = response_format_grammar(body.response_format)
    from_extra = extra_grammar(body.structured_outputs)
    if from_format and from_extra:
        raise HTTPError(400, "give response_format or structured_outputs, not both", "structured_outputs")
    return from_format or from_extra


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
    except ValueError:
        return None


def as_arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class JsonText:
    """Streams grammar-made JSON on as it comes, escaping raw control characters inside strings."""

    def __init__(self):
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> list:
        out = []
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                elif char < " ":
                    char = json.dumps(char)[1:-1]
            elif char == '"':
                self.in_string = True
            out.append(char)
        return ["".join(out)] if out else []

    def finish(self) -> list:
        return []


class ForcedToolCalls:
    """Reads the output of a tool grammar (`required`: an array of calls; a named function: its
    arguments) once it is complete. Output that is not JSON (cut by max_tokens) stays content."""

    def __init__(self, function_name: str | None = None):
        self.function_name = function_name
        self.text = ""

    def feed(self, text: str) -> list:
        self.text += text
        return []

    def finish(self) -> list:
        value = parse_lenient(self.text)
        if self.function_name is not None:
            return [ToolCall(self.function_name, as_arguments(value))] if value is not None else self.rest()
        if isinstance(value, list) and value and all(is_call(item) for item in value):
            return [ToolCall(item["name"], as_arguments(item["arguments"])) for item in value]
        return self.rest()

    def rest(self) -> list:
        return [self.text] if self.text else []


def is_call(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and "arguments" in item
