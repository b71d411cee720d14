"""Tool calls in generated text, for `tool_choice: auto`; the parser is chosen in conf/server.yml.

Every parser reads the text as it streams: `feed(text)` returns what can be sent on now, content
strings and complete ToolCalls in order; `finish()` returns the rest when the output ends. Text
that could be the start of a tool call is held back until it is known whether it is one.

- hermes: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, any number, content around them
  (Hermes, Qwen2.5, the embedded default model).
- llama3_json: the whole output is `{"name": …, "parameters": {…}}`, optionally after
  `<|python_tag|>`, several separated by `;` (Llama 3.1 and later).
"""
import json
import uuid
from dataclasses import dataclass, field


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=call_id)


def call_from_object(value) -> ToolCall | None:
    """A ToolCall from a decoded {"name", "arguments" | "parameters"} object, or None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(value["name"], text)


def call_from_json(text: str) -> ToolCall | None:
    try:
        return call_from_object(json.loads(text, strict=False))
    except ValueError:
        return None


def held_back(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class HermesToolParser:
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self):
        self.buffer = ""
        self.in_call = False

    def feed(self, text: str) -> list:
        self.buffer += text
        events = []
        while True:
            if self.in_call:
                end = self.buffer.find(self.CLOSE)
                if end < 0:
                    return events
                body, self.buffer = self.buffer[:end], self.buffer[end + len(self.CLOSE):]
                self.in_call = False
                events.append(call_from_json(body) or f"{self.OPEN}{body}{self.CLOSE}")
            else:
                start = self.buffer.find(self.OPEN)
                if start < 0:
                    keep = held_back(self.buffer, self.OPEN)
                    ready, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
                    return events + ([ready] if ready else [])
                if start:
                    events.append(self.buffer[:start])
                self.buffer = self.buffer[start + len(self.OPEN):]
                self.in_call = True

    def finish(self) -> list:
        rest, self.buffer = self.buffer, ""
        if not self.in_call:
            return [rest] if rest else []
        # The output ended (a stop token, say) before the closing tag: a complete call still counts.
        self.in_call = False
        return [call_from_json(rest) or self.OPEN + rest]


class Llama3JsonToolParser:
    PYTHON_TAG = "<|python_tag|>"

    def __init__(self):
        self.buffer = ""
        self.mode = "undecided"  # then "content" or "calls"
        self.decoder = json.JSONDecoder(strict=False)

    def feed(self, text: str) -> list:
        self.buffer += text
        if self.mode == "undecided":
            self.decide()
        if self.mode == "content":
            return self.take_content()
        if self.mode == "calls":
            return self.take_calls()
        return []

    def decide(self) -> None:
        start = self.buffer.lstrip()
        if start.startswith(self.PYTHON_TAG) or start.startswith("{"):
            self.mode = "calls"
        elif start and not self.PYTHON_TAG.startswith(start):
            self.mode = "content"

    def take_content(self) -> list:
        text, self.buffer = self.buffer, ""
        return [text] if text else []

    def take_calls(self) -> list:
        """Complete calls from the front of the buffer; text that is not a call turns the rest into content."""
        events = []
        while True:
            rest = self.buffer.lstrip().removeprefix(self.PYTHON_TAG).lstrip().lstrip(";").lstrip()
            if not rest:
                return events
            try:
                value, end = self.decoder.raw_decode(rest)
            except ValueError:
                if not rest.startswith("{"):
                    self.mode = "content"
                    return events + self.take_content()
                return events  # a call still being written
            call = call_from_object(value)
            if call is None:
                self.mode = "content"
                return events + self.take_content()
            events.append(call)
            self.buffer = rest[end:]

    def finish(self) -> list:
        if self.mode == "calls" and self.buffer.strip(" \n;"):
            self.mode = "content"  # an unfinished call: it is text after all
        events = self.take_content() if self.mode != "calls" else []
        self.buffer = ""
        return events


PARSERS = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}


def make_parser(name: str):
    return PARSERS[name]()


def parse_text(parser, text: str) -> tuple[str, list[ToolCall]]:
    """Content and tool calls in a complete output."""
    events = parser.feed(text) + parser.finish()
    content = "".join(event for event in events if isinstance(event, str))
    return content, [event for event in events if isinstance(event, ToolCall)]
