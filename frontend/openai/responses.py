"""OpenAI's Responses API: the request, its translation into a chat, and the rendering of the run
into a Response object or its stream of typed events.

The request becomes a chat: `instructions` and the input items become chat messages for the
model's template, function tools and tool_choice a tool plan, `text.format` its grammar. The run's
Updates become output items (reasoning, message, function_call) in the order they come.

Frontends keep nothing between requests, so nothing is stored: `store` is taken and answered as
false, `previous_response_id` and `conversation` are refused (the client sends the conversation
as input items), and GET/DELETE /v1/responses/{id} answer 404 (docs/api.md, "Responses").
"""
import contextlib
import re
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.config import RequestLimits
from frontend.http import HTTPError, json_response, off_the_loop_if, read_json
from frontend.openai.chat import max_tokens_of
from frontend.openai.protocol import (
    Chat, ChatMessage, FunctionCall, FunctionDefinition, MessageToolCall, SamplingRequest, Tool,
)
from frontend.openai.sampling import choice_specs, requested_grammar, sampling_kwargs
from frontend.priorities import ask_priority
from frontend.request_bounds import check_content_blocks, check_count, check_generations, check_sampling
from frontend.run.answer import Answer, respond
from frontend.run.choices import chat_choices
from frontend.run.state import FrontendState
from frontend.media import chat_prompt
from frontend.text.chat import ContentPart as ChatPart, ImageURL
from frontend.text.reasoning import Reasoning
from frontend.text.structured_outputs import COMPACT, check_schema
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import FunctionTool, ToolPlan

# Request


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None  # input_image: a data URL, or http(s) (frontend/media.py)
    detail: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """Any input item; which fields it needs depends on its type (checked in chat_messages)."""

    type: str = "message"  # the SDK's EasyInputMessage may leave it out
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None  # function_call, function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None  # function_call
    output: str | list[ContentPart] | None = None  # function_call_output


class FunctionToolParam(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceParam(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))


class ResponsesRequest(SamplingRequest, kw_only=True):
    """OpenAI's fields, and vLLM's sampling extras (top_k, seed, stop, …) as on the other routes."""

    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceParam | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None


STATELESS = ("this server stores no responses (its frontends are stateless), so {field} cannot be looked up: "
             "send the whole conversation as input items, the output items received included")


def check_request(body: ResponsesRequest) -> None:
    """Refuse what this server cannot do, each with the field and why."""
    for field in ("previous_response_id", "conversation"):
        if getattr(body, field) is not None:
            raise HTTPError(400, STATELESS.format(field=field), field)
    if body.background:
        raise HTTPError(400, "background responses must be stored to be fetched later, and this server stores "
                             "no responses: leave background off, or stream", "background")
    if body.n != 1:
        raise HTTPError(400, "a response has one output: n is for /v1/chat/completions", "n")
    if body.response_format is not None:
        raise HTTPError(400, "response_format is a Chat Completions field: Responses takes text.format",
                        "response_format")
    if isinstance(body.input, list) and not body.input and body.instructions is None:
        raise HTTPError(400, "input is empty", "input")


# Translation into a chat


def chat_messages(body: ResponsesRequest, image_fields: list[str]) -> list[ChatMessage]:
    """`instructions` as the system message, then the input items as the chat template takes them; the
    field of each input_image goes into `image_fields`, in order."""
    messages = [] if body.instructions is None else [ChatMessage("system", body.instructions)]
    if isinstance(body.input, str):
        return messages + [ChatMessage("user", body.input)]
    for index, item in enumerate(body.input):
        add_item(messages, item, f"input[{index}]", image_fields)
    return messages


def add_item(messages: list[ChatMessage], item: InputItem, field: str, image_fields: list[str]) -> None:
    if item.type == "message":
        role = needed(item.role, f"{field}.role")
        messages.append(ChatMessage(role, message_content(item.content, f"{field}.content", image_fields)))
    elif item.type == "function_call":
        function = FunctionCall(needed(item.name, f"{field}.name"), item.arguments or "{}")
        call = MessageToolCall(function, id=needed(item.call_id, f"{field}.call_id"))
        last = messages[-1] if messages else None
        # Calls made in one turn belong to that turn's assistant message, as templates expect.
        if last is not None and last.role == "assistant":
            last.tool_calls = [*(last.tool_calls or []), call]
        else:
            messages.append(ChatMessage("assistant", None, tool_calls=[call]))
    elif item.type == "function_call_output":
        call_id = needed(item.call_id, f"{field}.call_id")
        messages.append(ChatMessage("tool", text_of(item.output, f"{field}.output"), tool_call_id=call_id))
    elif item.type != "reasoning":  # earlier thinking: chat templates leave it out of the prompt
        raise HTTPError(400, f"input items of type {item.type[:40]!r} are not supported: message, function_call, "
                             "function_call_output and reasoning are", f"{field}.type")


def needed(value, field: str):
    if value is None:
        raise HTTPError(400, f"{field} is required", field)
    return value


TEXT_PARTS = ("input_text", "output_text", "text")


def text_of(content: str | list[ContentPart] | None, field: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part_text(part, f"{field}[{index}]") for index, part in enumerate(content))


def part_text(part: ContentPart, field: str) -> str:
    text = part.refusal if part.type == "refusal" else part.text if part.type in TEXT_PARTS else None
    if text is None:
        raise HTTPError(400, f"only text and input_image parts are supported, not {part.type[:40]!r}", field)
    return text


def message_content(content: str | list[ContentPart] | None, field: str,
                    image_fields: list[str]) -> str | list[ChatPart]:
    """A message's text, or with input_image parts, text and image_url parts in their order."""
    if not isinstance(content, list) or all(part.type != "input_image" for part in content):
        return text_of(content, field)
    parts = []
    for index, part in enumerate(content):
        if part.type != "input_image":
            parts.append(ChatPart("text", part_text(part, f"{field}[{index}]")))
        elif part.image_url is None:
            raise HTTPError(400, "an input_image needs image_url (a data URL or an http(s) URL): this server keeps "
                                 "no files for file_id", f"{field}[{index}].image_url")
        else:
            parts.append(ChatPart("image_url", image_url=ImageURL(part.image_url, part.detail)))
            image_fields.append(f"{field}[{index}].image_url")
    return parts


def chat_tools(body: ResponsesRequest) -> list[Tool] | None:
    if not body.tools:
        return None
    tools = []
    for index, tool in enumerate(body.tools):
        if tool.type != "function":
            raise HTTPError(400, f"only function tools are supported, not {tool.type[:40]!r}",
                            f"tools[{index}].type")
        name = needed(tool.name, f"tools[{index}].name")
        tools.append(Tool(function=FunctionDefinition(name, tool.description, tool.parameters, tool.strict)))
    return tools


def tool_choice_of(body: ResponsesRequest) -> str:
    """"none", "auto", "required", or the name of the one function to call."""
    choice = body.tool_choice
    if not body.tools and choice not in (None, "none"):
        raise HTTPError(400, "tool_choice needs tools", "tool_choice")
    if isinstance(choice, ToolChoiceParam):
        if choice.type != "function":
            raise HTTPError(400, f"tool_choice of type {choice.type[:40]!r} is not supported: "
                                 "\"none\", \"auto\", \"required\" or a function are", "tool_choice.type")
        return needed(choice.name, "tool_choice.name")
    if choice is None:
        return "auto" if body.tools else "none"
    return choice


def text_format(body: ResponsesRequest) -> TextFormat:
    text_format = body.text.format if body.text is not None else TextFormat(type="text")
    if text_format.type == "json_schema" and text_format.schema is None:
        raise HTTPError(400, "text.format of type json_schema needs a schema", "text.format.schema")
    return text_format


def format_grammar(body: ResponsesRequest, max_depth: int) -> dict | None:
    """The grammar text.format asks for, or vLLM's structured_outputs extra; its schema checked (a worker
    thread's work: checking grows with the schema)."""
    from_extra = requested_grammar(body, max_depth)  # response_format itself is refused in check_request
    text = text_format(body)
    if text.type == "text":
        return from_extra
    if from_extra is not None:
        raise HTTPError(400, "give text.format or structured_outputs, not both", "structured_outputs")
    if text.type == "json_object":
        return {"json_object": True, **COMPACT}
    return {"json": check_schema(text.schema, max_depth, "text.format.schema"), **COMPACT}


def tool_plan(body: ResponsesRequest, tool_parser: str, max_schema_depth: int) -> ToolPlan:
    tools = [FunctionTool(tool.function.name, tool.function.description, tool.function.parameters)
             for tool in chat_tools(body) or []]
    return ToolPlan(tools, tool_choice_of(body), body.parallel_tool_calls, format_grammar(body, max_schema_depth),
                    tool_parser, max_schema_depth, parameters_field="tools[{index}].parameters",
                    format_field="text.format")


# Rendering

encode = msgspec.json.Encoder().encode


class OutputText(msgspec.Struct, kw_only=True):
    type: str = "output_text"
    text: str
    annotations: list = []
    logprobs: list = []


class ReasoningText(msgspec.Struct, kw_only=True):
    type: str = "reasoning_text"
    text: str


class MessageItem(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    status: str = "in_progress"
    content: list[OutputText] = []


class ReasoningItem(msgspec.Struct, kw_only=True):
    id: str
    type: str = "reasoning"
    summary: list = []
    content: list[ReasoningText] = []
    status: str = "in_progress"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function_call"
    call_id: str
    name: str
    arguments: str
    status: str = "in_progress"


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict = msgspec.field(default_factory=lambda: {"cached_tokens": 0, "cache_write_tokens": 0})
    output_tokens_details: dict = msgspec.field(default_factory=lambda: {"reasoning_tokens": 0})


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str = "in_progress"
    completed_at: int | None = None
    error: dict | None = None
    incomplete_details: dict | None = None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict
    model: str
    output: list = []
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: None = None
    background: bool = False
    store: bool = False  # whatever the request said: nothing is kept (docs/api.md, "Responses")
    temperature: float | None
    top_p: float | None
    text: TextConfig
    tool_choice: Any
    tools: list[FunctionToolParam]
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseWriter(Answer):
    """One response as its run goes: output items opened, grown and closed as the run's events come,
    and, when streaming, OpenAI's events for each step, numbered by sequence_number. `forced` runs
    (a required or named tool) make only calls, never a message. It is its own stream's renderer."""

    def __init__(self, body: ResponsesRequest, model: str, prompt_tokens: int, forced: bool, stream: bool):
        self.response = ResponseObject(
            id=item_id("resp"), created_at=int(time.time()), instructions=body.instructions,
            max_output_tokens=body.max_output_tokens, metadata=body.metadata or {}, model=model,
            parallel_tool_calls=body.parallel_tool_calls, temperature=body.temperature, top_p=body.top_p,
            text=TextConfig(format=text_format(body)), tool_choice=body.tool_choice or tool_choice_of(body),
            tools=body.tools or [], user=body.user,
        )
        self.prompt_tokens = prompt_tokens
        self.forced = forced
        self.events: list[bytes] | None = [] if stream else None
        self.sequence = 0
        self.open: MessageItem | ReasoningItem | None = None  # the item text is going into
        self.texts: list[str] = []  # the open item's text so far
        self.space = ""  # whitespace not yet in any item: dropped unless visible text follows
        self.output_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None

    @property
    def output(self) -> list:
        return self.response.output

    def emit(self, kind: str, **fields) -> None:
        if self.events is not None:
            event = {"type": kind, "sequence_number": self.sequence, **fields}
            self.events.append(b"event: " + kind.encode() + b"\ndata: " + encode(event) + b"\n\n")
            self.sequence += 1

    def drained(self) -> list[bytes]:
        events, self.events = self.events, []
        return events

    def renderer(self) -> "ResponseWriter":
        return self

    def whole_response(self) -> Response:
        return json_response(self.finish())

    # The stream, as frontend.run.answer.rendered asks: update() for each Update, then last() or error().

    def update(self, update) -> list[bytes]:
        if self.sequence == 0:
            self.emit("response.created", response=self.response)
            self.emit("response.in_progress", response=self.response)
        self.take(update)
        return self.drained()

    def last(self) -> list[bytes]:
        self.finish()
        return self.drained()

    def error(self, error: HTTPError) -> list[bytes]:
        """After the first event: an error event, then response.failed."""
        code = "server_error" if error.status >= 500 else "invalid_prompt"
        self.emit("error", code=code, message=error.message, param=error.param)
        self.response.status, self.response.error = "failed", {"code": code, "message": error.message}
        self.emit("response.failed", response=self.response)
        return self.drained()

    def end(self) -> list[bytes]:
        return []  # OpenAI sends no [DONE] here

    def take(self, update) -> None:
        for event in update.events:
            if isinstance(event, ToolCall):
                self.call(event)
            elif isinstance(event, Reasoning):
                self.reasoning(event.text)
            else:
                self.content(event.text)
        self.output_tokens = update.completion_tokens
        self.cached_tokens = update.cached_tokens
        if update.finish_reason is not None:
            self.finish_reason = update.finish_reason

    def content(self, text: str) -> None:
        if not isinstance(self.open, MessageItem):
            if not (self.space + text).strip():
                self.space += text
                return
            text, self.space = self.space + text, ""
            self.open_message()
        self.texts.append(text)
        self.emit("response.output_text.delta", item_id=self.open.id, output_index=len(self.output) - 1,
                  content_index=0, delta=text, logprobs=[])

    def reasoning(self, text: str) -> None:
        if not isinstance(self.open, ReasoningItem):
            self.close_open()
            self.space = ""
            self.open = self.add_item(ReasoningItem(id=item_id("rs")))
            self.emit("response.content_part.added", item_id=self.open.id, output_index=len(self.output) - 1,
                      content_index=0, part=ReasoningText(text=""))
        self.texts.append(text)
        self.emit("response.reasoning_text.delta", item_id=self.open.id, output_index=len(self.output) - 1,
                  content_index=0, delta=text)

    def call(self, call: ToolCall) -> None:
        self.close_open()
        self.space = ""
        item = self.add_item(FunctionCallItem(id=item_id("fc"), call_id=call.id, name=call.name, arguments=""))
        index = len(self.output) - 1
        self.emit("response.function_call_arguments.delta", item_id=item.id, output_index=index,
                  delta=call.arguments)
        item.arguments, item.status = call.arguments, "completed"
        self.emit("response.function_call_arguments.done", item_id=item.id, output_index=index,
                  arguments=call.arguments)
        self.emit("response.output_item.done", output_index=index, item=item)

    def open_message(self) -> None:
        self.close_open()
        self.open = self.add_item(MessageItem(id=item_id("msg")))
        self.emit("response.content_part.added", item_id=self.open.id, output_index=len(self.output) - 1,
                  content_index=0, part=OutputText(text=""))

    def add_item(self, item):
        self.output.append(item)
        self.emit("response.output_item.added", output_index=len(self.output) - 1, item=item)
        return item

    def close_open(self) -> None:
        item, index = self.open, len(self.output) - 1
        if item is None:
            return
        text, self.texts, self.open = "".join(self.texts), [], None
        item.status = "incomplete" if self.finish_reason == "length" else "completed"
        if isinstance(item, MessageItem):
            item.content = [OutputText(text=text)]
            self.emit("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                      text=text, logprobs=[])
        else:
            item.content = [ReasoningText(text=text)]
            self.emit("response.reasoning_text.done", item_id=item.id, output_index=index, content_index=0,
                      text=text)
        self.emit("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                  part=item.content[0])
        self.emit("response.output_item.done", output_index=index, item=item)

    def finish(self) -> ResponseObject:
        """Close the output and the response."""
        if not self.output and not self.forced:
            self.open_message()  # an answer of nothing (or only whitespace) is still a message
            self.texts.append(self.space)
        self.close_open()
        response = self.response
        response.usage = ResponseUsage(self.prompt_tokens, self.output_tokens, self.prompt_tokens + self.output_tokens,
                                       {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0})
        if self.finish_reason == "length":
            response.status, response.incomplete_details = "incomplete", {"reason": "max_output_tokens"}
        else:
            response.status, response.completed_at = "completed", int(time.time())
        self.emit(f"response.{response.status}", response=response)
        return response


# The route

CHAT_FIELDS = [  # chat's names for what the Responses API names otherwise, in errors raised by shared code
    (re.compile(r"\bmessages\b"), "input"),
]


def as_responses_field(text: str) -> str:
    for pattern, name in CHAT_FIELDS:
        text = pattern.sub(name, text)
    return text


@contextlib.contextmanager
def responses_fields():
    """Errors from the chat code this route shares, naming fields as the Responses API does."""
    try:
        yield
    except HTTPError as error:
        error.message = as_responses_field(error.message)
        error.param = error.param and as_responses_field(error.param)
        raise


def check_bounds(body: ResponsesRequest, limits: RequestLimits, vocab_size: int) -> None:
    items = body.input if isinstance(body.input, list) else []
    check_count(items, limits.max_messages, "input", "items")
    check_content_blocks(((f"input[{index}]", parts_of(item.content) + parts_of(item.output))
                          for index, item in enumerate(items)), limits, "input")
    check_count(body.tools, limits.max_tools, "tools", "tools")
    check_generations(1, body.n, limits)
    check_sampling(body, limits, vocab_size)


def parts_of(content: str | list | None) -> int:
    return len(content) if isinstance(content, list) else 0


def as_chat(body: ResponsesRequest) -> Chat:
    """The chat this request stands for, as the chat template takes it."""
    image_fields = []
    return Chat(messages=chat_messages(body, image_fields), tools=chat_tools(body), image_fields=image_fields)


async def responses_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, ResponsesRequest, state.server.max_body_bytes)
    pool, model = state.pool_for(body.model)
    tokenizer, limits = pool.tokenizer, state.server.limits
    with responses_fields():
        check_request(body)
        check_bounds(body, limits, tokenizer.vocab_size)
        ask_priority(body.priority, state.server.priority)
        chat = as_chat(body)
        constrained = bool(body.tools) or body.text is not None or body.structured_outputs is not None
        plan = await off_the_loop_if(constrained, tool_plan, body, state.server.tool_parser, limits.max_schema_depth)
        prompt_ids, images = await chat_prompt(pool, chat, state.server)
        max_tokens = max_tokens_of(pool, len(prompt_ids), body.max_output_tokens, "max_output_tokens")
        sampling = sampling_kwargs(body, max_tokens, plan.grammar)
    choices = chat_choices(state.server, pool, plan, prompt_ids, 1)
    writer = ResponseWriter(body, model, len(prompt_ids), plan.forced, body.stream)
    return await respond(request, pool, choice_specs(body, prompt_ids, sampling, images), choices, writer, body.stream)


async def nothing_stored(request: Request) -> Response:
    raise HTTPError(404, f"no response {request.path_params['response_id'][:100]!r}: this server stores no responses "
                         "(its frontends are stateless), so there is none to retrieve, cancel or delete",
                    "response_id")


RESPONSES_ROUTES = [
    Route("/v1/responses", responses_endpoint, methods=["POST"]),
    Route("/v1/responses/{response_id:path}", nothing_stored, methods=["GET", "POST", "DELETE"]),
]
