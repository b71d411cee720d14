"""Structured outputs: grammars as plain data the engine turns into vLLM's StructuredOutputsParams,
the checking of their JSON schemas, and the reading of what a grammar produced.

Grammar-made JSON is read leniently: xgrammar lets raw control characters into strings (strict
parsers refuse them), and a free string may run into max_tokens. So JSON text is passed on with
those characters escaped, and tool-call arguments are parsed with strict=False and re-serialized.
"""
import json
import logging
from typing import Any

import jsonschema

from frontend.http import HTTPError
from frontend.request_bounds import check_depth
from frontend.text.tool_parsers import ToolCall

log = logging.getLogger(__name__)

# A validator's message quotes the offending part of the schema: quote no more than this of it.
MESSAGE_CHARS = 300
LATEST = jsonschema.validators.Draft202012Validator

# Pads nothing between JSON tokens where the backend honours it per request; the engine-wide
# structured_outputs_config in conf/inference.yml does the same for vLLM versions that read it there.
COMPACT = {"disable_any_whitespace": True}


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
    if not isinstance(schema.get("$schema", ""), str):
        raise HTTPError(400, f"{field}.$schema must be a string: the URI of a JSON Schema dialect", field)
    try:
        # A dialect it does not know is checked as the latest (as xgrammar reads it), without a warning.
        jsonschema.validators.validator_for(schema, default=LATEST).check_schema(schema)
    except jsonschema.SchemaError as error:
        where = error.json_path.removeprefix("$")
        raise HTTPError(400, f"{field} is not a valid JSON schema: at {field}{where}: "
                             f"{error.message[:MESSAGE_CHARS]}", field) from None
    except Exception as error:  # the validator's own code failing on input it does not expect
        log.info("%s: the JSON schema validator failed: %r", field, error)
        raise HTTPError(400, f"{field} is not a valid JSON schema: the validator could not read it "
                             f"({type(error).__name__})", field) from None
    return schema


def is_json_grammar(grammar: dict | None) -> bool:
    return grammar is not None and ("json" in grammar or "json_object" in grammar)


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
