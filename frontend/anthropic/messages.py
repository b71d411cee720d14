"""Anthropic Messages on the chat machinery: a request becomes a Chat (messages and tools for the
chat template), sampling and a ToolPlan (tools and tool_choice), and the run's Updates become a
Message, whole or as events.

How the content blocks map:
- system (a string or text blocks), and messages of role "system", become system messages;
- a user message's text blocks become user messages, each tool_result a "tool" message (its
  content, "Error: " first when is_error) in the order given;
- an assistant message's text becomes its content and its tool_use blocks its tool calls; thinking
  blocks are left out of the prompt, as chat templates leave earlier reasoning out; an assistant
  message last is continued, not answered.
- tool_choice auto, any, tool and none are a ToolPlan's auto, required, the function's name and
  none; disable_parallel_tool_use allows one call.

The answer is built block by block (MessageBuilder), and the streamed events and the whole Message
come from the same builder, so a stream accumulates to exactly what the whole answer would be.
"""
import json
from collections.abc import Iterable

from starlette.responses import Response

from common.config import RequestLimits
from frontend.anthropic.protocol import (
    Base64Source, ContentBlockDelta, ContentBlockStart, ContentBlockStop, CountTokensRequest, ImageBlock,
    InputJsonDelta, InputMessage, Message,
    MessageDelta, MessagesRequest, MessageStart, MessageStop, OutputBlock, Ping, RedactedThinkingBlock, StopDelta,
    TextBlock, TextDelta, TextOut, ThinkingBlock, ThinkingDelta, ThinkingOut, ToolChoiceAny, ToolChoiceNone,
    ToolChoiceTool, ToolResultBlock, ToolUseBlock, ToolUseOut, UrlSource, Usage, message_id,
)
from frontend.anthropic.sse import error_event, event
from frontend.http import HTTPError, json_response
from frontend.request_bounds import check_content_blocks, check_count
from frontend.run.answer import Answer
from frontend.run.choices import Update
from frontend.text.chat import (
    Chat, ChatMessage, ContentPart, FunctionCall, FunctionDefinition, ImageURL, MessageToolCall, Tool,
)
from frontend.text.reasoning import Reasoning
from frontend.text.structured_outputs import check_schema, parse_lenient
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import FunctionTool, ToolPlan

SAMPLING_FIELDS = ("temperature", "top_p", "top_k")  # vLLM's names too


def check_bounds(body: CountTokensRequest, limits: RequestLimits) -> None:
    check_count(body.messages, limits.max_messages, "messages", "messages")
    system = [("system", len(body.system))] if isinstance(body.system, list) else []
    check_content_blocks(system + [(f"messages[{index}].content", blocks_of(message.content))
                                   for index, message in enumerate(body.messages)], limits, "messages")
    check_count(body.tools, limits.max_tools, "tools", "tools")
    stops = getattr(body, "stop_sequences", None) or []
    check_count(stops, limits.max_stop_strings, "stop_sequences", "strings")
    for index, text in enumerate(stops):
        if len(text) > limits.max_stop_string_chars:
            raise HTTPError(400, f"a stop sequence is {len(text)} characters long, more than the limit of "
                                 f"{limits.max_stop_string_chars}", f"stop_sequences[{index}]")


def blocks_of(content: str | list) -> int:
    """A message's content blocks, and those inside its tool results."""
    if isinstance(content, str):
        return 0
    inner = sum(len(block.content) for block in content
                if isinstance(block, ToolResultBlock) and isinstance(block.content, list))
    return len(content) + inner


def check_tools(body: CountTokensRequest, max_schema_depth: int) -> None:
    """Every input_schema: a JSON schema of an object (a worker thread's work: it grows with them)."""
    for index, tool in enumerate(body.tools or []):
        field = f"tools[{index}].input_schema"
        check_schema(tool.input_schema, max_schema_depth, field)
        if tool.input_schema.get("type") != "object":
            raise HTTPError(400, f"{field}.type must be 'object': a tool's input is an object", f"{field}.type")


def as_chat(body: CountTokensRequest) -> Chat:
    """The chat that means the same to the chat template (a worker thread's work: it grows with the body)."""
    tools = [Tool(function=FunctionDefinition(t.name, t.description, t.input_schema)) for t in body.tools or []]
    image_fields = []
    messages = chat_messages(body, image_fields)
    # As Anthropic does, an answer to messages that end with the assistant's text continues that text.
    continuing = messages[-1].role == "assistant" and not messages[-1].tool_calls
    return Chat(messages=messages, tools=tools or None, continue_final_message=continuing, image_fields=image_fields)


def sampling_of(body: MessagesRequest, grammar: dict | None) -> dict:
    """vLLM SamplingParams keyword arguments: the sampling fields given, max_tokens, the tools' grammar."""
    sampling = {name: getattr(body, name) for name in SAMPLING_FIELDS if getattr(body, name) is not None}
    sampling["max_tokens"] = body.max_tokens
    if grammar is not None:
        sampling["structured_outputs"] = grammar
    return sampling


def tool_plan(body: MessagesRequest, tool_parser: str, max_schema_depth: int) -> ToolPlan:
    """What tools and tool_choice ask of the output (a worker thread's work: it grows with the schemas)."""
    check_tools(body, max_schema_depth)
    tools = [FunctionTool(tool.name, tool.description, tool.input_schema) for tool in body.tools or []]
    parallel = not getattr(body.tool_choice, "disable_parallel_tool_use", False)
    return ToolPlan(tools, tool_choice_of(body), parallel, None, tool_parser, max_schema_depth,
                    parameters_field="tools[{index}].input_schema")


def tool_choice_of(body: CountTokensRequest) -> str:
    """As a ToolPlan names it: "none", "auto", "required" or the function's name."""
    choice = body.tool_choice
    if not body.tools:
        if not isinstance(choice, (ToolChoiceNone, type(None))):
            raise HTTPError(400, "tool_choice needs tools", "tool_choice")
        return "none"
    if isinstance(choice, ToolChoiceNone):
        return "none"
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceTool):
        return choice.name
    return "auto"  # Anthropic's default where tools are given


def chat_messages(body: CountTokensRequest, image_fields: list[str]) -> list[ChatMessage]:
    """The chat's messages; the field of each image block goes into `image_fields`, in order."""
    messages = []
    if body.system:
        messages.append(ChatMessage("system", text_of(body.system)))
    for index, message in enumerate(body.messages):
        messages += chat_messages_of(message, f"messages[{index}]", image_fields)
    return messages


def text_of(content: str | list[TextBlock] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(block.text for block in content)


def chat_messages_of(message: InputMessage, field: str, image_fields: list[str]) -> list[ChatMessage]:
    if isinstance(message.content, str):
        return [ChatMessage(message.role, message.content)]
    if message.role == "assistant":
        return [assistant_message(message.content, field)]
    messages, parts = [], []
    for index, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            parts.append(ContentPart("text", block.text))
        elif isinstance(block, ImageBlock) and message.role == "user":
            parts.append(ContentPart("image_url", image_url=ImageURL(image_url(block.source))))
            image_fields.append(f"{field}.content[{index}].source")
        elif isinstance(block, ToolResultBlock) and message.role == "user":
            if parts:
                messages.append(ChatMessage(message.role, content_of(parts)))
                parts = []
            prefix = "Error: " if block.is_error else ""
            messages.append(ChatMessage("tool", prefix + text_of(block.content), tool_call_id=block.tool_use_id))
        else:
            raise HTTPError(400, f"a {message.role} message cannot hold a {block_type(block)} block",
                            f"{field}.content[{index}]")
    if parts or not messages:
        messages.append(ChatMessage(message.role, content_of(parts)))
    return messages


def content_of(parts: list[ContentPart]) -> str | list[ContentPart]:
    """Text as one string; with images, the parts in their order."""
    if any(part.type == "image_url" for part in parts):
        return parts
    return "".join(part.text for part in parts)


def image_url(source: Base64Source | UrlSource) -> str:
    """As frontend/media.py takes images: base64 data as a data URL."""
    if isinstance(source, UrlSource):
        return source.url
    return f"data:{source.media_type};base64,{source.data}"


def assistant_message(blocks: list, field: str) -> ChatMessage:
    texts, calls = [], []
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(MessageToolCall(FunctionCall(block.name, arguments), id=block.id))
        elif not isinstance(block, (ThinkingBlock, RedactedThinkingBlock)):
            raise HTTPError(400, f"an assistant message cannot hold a {block_type(block)} block",
                            f"{field}.content[{index}]")
    return ChatMessage("assistant", "".join(texts) if texts or not calls else None, tool_calls=calls or None)


def block_type(block) -> str:
    return type(block).__struct_config__.tag


def stop_reason_of(finish_reason: str | None, stop_sequence: str | None, called: bool) -> str:
    if finish_reason == "length":
        return "max_tokens"
    if stop_sequence is not None:
        return "stop_sequence"
    return "tool_use" if called else "end_turn"


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def input_of(arguments: str) -> dict:
    value = parse_lenient(arguments)
    # A tool's input is an object (input_schema's type); arguments the model wrote as anything
    # else say nothing a client could act on.
    return value if isinstance(value, dict) else {}


class MessageBuilder(Answer):
    """One answer as it grows, block by block: each step returns the events it streams, and
    `message()` is the whole answer so far.

    A text or thinking block opens at the first text of its kind that is not only whitespace (the
    whitespace before it is kept); whitespace that no block takes (between tool calls, at the end)
    is dropped."""

    def __init__(self, model: str, input_tokens: int):
        self.id = message_id()
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens = 0
        self.blocks: list[OutputBlock] = []
        self.texts: list[list[str]] = []  # the text of each text or thinking block, in pieces
        self.open: str | None = None  # the kind of the block open for more text: "text" or "thinking"
        self.held, self.held_kind = "", None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None

    def renderer(self) -> "MessageEvents":
        return MessageEvents(self)

    def count_prompt(self, tokens: int) -> None:
        self.input_tokens = tokens

    def whole_response(self) -> Response:
        return json_response(self.message())

    def start(self) -> list:
        return [MessageStart(self.message()), Ping()]

    def text(self, text: str) -> list:
        return self.add("text", text)

    def thinking(self, text: str) -> list:
        return self.add("thinking", text)

    def add(self, kind: str, text: str) -> list:
        if not text:
            return []
        if self.open == kind:
            self.texts[-1].append(text)
            return [self.delta(text)]
        if self.held_kind != kind:
            self.held, self.held_kind = "", kind
        if not text.strip():
            self.held += text
            return []
        text, self.held = self.held + text, ""
        events = self.close()
        self.open = kind
        self.blocks.append(TextOut("") if kind == "text" else ThinkingOut(""))
        self.texts.append([text])
        return events + [ContentBlockStart(len(self.blocks) - 1, self.blocks[-1]), self.delta(text)]

    def delta(self, text: str) -> ContentBlockDelta:
        delta = TextDelta(text) if self.open == "text" else ThinkingDelta(text)
        return ContentBlockDelta(len(self.blocks) - 1, delta)

    def tool_use(self, call: ToolCall) -> list:
        events = self.close()
        self.held = ""
        block = ToolUseOut(tool_use_id(call.id), call.name, input_of(call.arguments))
        self.blocks.append(block)
        self.texts.append([])
        index = len(self.blocks) - 1
        arguments = json.dumps(block.input, ensure_ascii=False)
        return events + [ContentBlockStart(index, ToolUseOut(block.id, block.name, {})),
                         ContentBlockDelta(index, InputJsonDelta(arguments)), ContentBlockStop(index)]

    def take(self, update: Update) -> list:
        """The events one Update of the run makes."""
        events = []
        for item in update.events:
            if isinstance(item, ToolCall):
                events += self.tool_use(item)
            else:
                events += self.thinking(item.text) if isinstance(item, Reasoning) else self.text(item.text)
        if update.finish_reason is not None:
            # vLLM's stop_reason is the stop string met, or a stop token's id: only a string is a stop sequence.
            stop = update.stop_reason if isinstance(update.stop_reason, str) else None
            events += self.finish(update.finish_reason, stop, update.completion_tokens)
        return events

    def close(self) -> list:
        if self.open is None:
            return []
        self.open = None
        return [ContentBlockStop(len(self.blocks) - 1)]

    def finish(self, finish_reason: str | None, stop_sequence: str | None, output_tokens: int) -> list:
        self.output_tokens = output_tokens
        called = any(isinstance(block, ToolUseOut) for block in self.blocks)
        self.stop_reason = stop_reason_of(finish_reason, stop_sequence, called)
        self.stop_sequence = stop_sequence if self.stop_reason == "stop_sequence" else None
        return self.close() + [MessageDelta(StopDelta(self.stop_reason, self.stop_sequence), self.usage()),
                               MessageStop()]

    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)

    def message(self) -> Message:
        content = [whole_block(block, texts) for block, texts in zip(self.blocks, self.texts)]
        return Message(id=self.id, model=self.model, content=content, stop_reason=self.stop_reason,
                       stop_sequence=self.stop_sequence, usage=self.usage())


class MessageEvents:
    """The run's Updates as Anthropic's events (a Renderer): message_start and a ping before the first
    Update's; no end marker (message_stop comes with the finishing Update), and a failure after the
    first byte an `error` event in Anthropic's error shape, which ends the stream."""

    def __init__(self, builder: MessageBuilder):
        self.builder = builder
        self.started = False

    def update(self, update: Update) -> Iterable[bytes]:
        events = [] if self.started else self.builder.start()
        self.started = True
        return map(event, events + self.builder.take(update))

    def last(self) -> Iterable[bytes]:
        return []

    def error(self, error: HTTPError) -> Iterable[bytes]:
        return [error_event(error)]

    def end(self) -> Iterable[bytes]:
        return []


def whole_block(block: OutputBlock, texts: list[str]) -> OutputBlock:
    if isinstance(block, TextOut):
        return TextOut("".join(texts))
    if isinstance(block, ThinkingOut):
        return ThinkingOut("".join(texts))
    return block

