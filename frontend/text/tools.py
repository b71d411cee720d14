"""What a request's tools, tool choice and output format mean, whatever protocol asked: the grammar
that constrains the output, and how each choice's text is read.

- choice "required" or a function's name: a grammar makes the output the calls' JSON, each call read
  once its JSON is complete; a call cut by max_tokens is dropped and never becomes content;
- choice "auto": the configured tool parser finds calls in the text as it streams;
- a JSON format grammar: the text as it comes, raw control characters in strings escaped;
- otherwise the text as it comes.
"""
from dataclasses import dataclass
from typing import Any

from frontend.http import HTTPError
from frontend.text.reasoning import ReasoningParser, make_reasoning_parser
from frontend.text.structured_outputs import COMPACT, ForcedToolCalls, JsonText, check_schema, is_json_grammar
from frontend.text.tool_parsers import PARSERS, make_parser

MODES = ("none", "auto", "required")


@dataclass
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict | None = None  # a JSON schema; None takes no arguments


class ToolPlan:
    """The grammar and the reading of every choice's text for one request.

    `choice` is "none", "auto", "required" or the name of the function to call. Building one checks
    every schema (a worker thread's work, as it grows with them); the field names in its errors are
    the protocol's own, given as `parameters_field` (with {index}) and `format_field`."""

    def __init__(self, tools: list[FunctionTool], choice: str, parallel: bool, format_grammar: dict | None,
                 tool_parser: str, max_schema_depth: int, *,
                 parameters_field: str = "tools[{index}].function.parameters", format_field: str = "response_format"):
        for index, tool in enumerate(tools):
            if tool.parameters is not None:
                field = parameters_field.format(index=index)
                check_schema(tool.parameters, max_schema_depth, field)
                # A draft-04 schema may hold any $defs; the grammar of `required` moves them to its root.
                if not isinstance(tool.parameters.get("$defs", {}), dict):
                    raise HTTPError(400, f"{field}.$defs must be an object of named schemas", f"{field}.$defs")
        self.tools = tools
        self.choice = choice
        self.tool_parser = tool_parser
        self.format_grammar = format_grammar
        self.grammar = format_grammar
        if self.forced and format_grammar is not None:
            raise HTTPError(400, f"a forced tool call and {format_field} cannot both constrain the output",
                            format_field)
        if choice == "required":
            self.grammar = required_tools_grammar(tools, parallel)
        elif self.forced:
            self.grammar = named_tool_grammar(self.named_tool())
        if choice == "auto" and tool_parser not in PARSERS:
            raise HTTPError(400, "tool_choice auto needs a tool parser: set tool_parser in conf/server.yml "
                                 f"to one of {sorted(PARSERS)}", "tool_choice")

    @property
    def forced(self) -> bool:
        """The output is tool calls only: there is never content."""
        return self.choice not in ("none", "auto")

    @property
    def named(self) -> str | None:
        """The function the output must call, if one is named."""
        return None if self.choice in MODES else self.choice

    def named_tool(self) -> FunctionTool:
        for tool in self.tools:
            if tool.name == self.choice:
                return tool
        raise HTTPError(400, f"tool_choice names {self.choice!r}, which is not among the tools", "tool_choice")

    def reasoning_parser(self, name: str, prompt_end: str = "") -> ReasoningParser | None:
        """A fresh reasoning parser for one choice when server.yml names one (`name`), else None. Forced
        calls and JSON formats are grammars from the first token: their output holds no thinking."""
        if not name or self.forced or is_json_grammar(self.grammar):
            return None
        return make_reasoning_parser(name, prompt_end)

    def reader(self):
        """A fresh reader of one choice's text: feed(text) -> list[str | ToolCall], finish()."""
        if self.forced:
            return ForcedToolCalls(self.named)
        if self.choice == "auto":
            return make_parser(self.tool_parser)
        return text_reader(self.format_grammar)


class PlainText:
    def feed(self, text: str) -> list:
        return [text] if text else []

    def finish(self) -> list:
        return []


def text_reader(format_grammar: dict | None):
    """How a choice's text reads when no tools are in play: grammar-made JSON escaped, else as it is."""
    return JsonText() if is_json_grammar(format_grammar) else PlainText()


def parameters_of(tool: FunctionTool) -> dict:
    return tool.parameters or {"type": "object", "properties": {}}


def named_tool_grammar(tool: FunctionTool) -> dict:
    """The output is the arguments object itself."""
    return {"json": parameters_of(tool), **COMPACT}


def required_tools_grammar(tools: list[FunctionTool], parallel: bool) -> dict:
    """The output is a JSON array of {"name", "arguments"}, at least one, each for a given tool."""
    definitions, calls = {}, []
    for tool in tools:
        parameters = dict(parameters_of(tool))
        # $refs point at the root, so every tool's $defs move there.
        definitions.update(parameters.pop("$defs", {}))
        calls.append({
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [tool.name]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    if definitions:
        schema["$defs"] = definitions
    return {"json": schema, **COMPACT}
