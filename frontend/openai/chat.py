"""POST /v1/chat/completions: chat with the model's template, tools and structured output, answered
whole or streamed as server-sent events.

How each choice's text becomes the answer depends on the tools and the format asked for:
- tool_choice "required" or a named function: a grammar makes the output the calls' JSON, each
  call read once its JSON is complete (streamed as a whole tool-call delta); a call cut by
  max_tokens is dropped and never becomes content;
- tool_choice "auto": the configured tool parser finds calls in the text as it streams;
- response_format json: the text as it comes, raw control characters in strings escaped;
- otherwise the text as it comes.
"""
import asyncio

from starlette.requests import Request
from starlette.responses import Response

from common.config import RequestLimits
from frontend.fan_out import merged, take_all
from frontend.http import HTTPError, json_response, read_json, unless_disconnected
from frontend.openai.logprobs import chat_logprobs
from frontend.openai.models import served_model
from frontend.openai.protocol import (
    AssistantMessage, CalledFunction, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, NamedToolChoice, StreamedFunction, ToolCallDelta, ToolCallOut, now,
    response_id, usage,
)
from frontend.openai.sampling import choice_specs, sampling_kwargs
from frontend.openai.sse import event, event_stream, started
from frontend.request_bounds import check_count, check_generations, check_sampling
from frontend.state import FrontendState
from frontend.text.chat_template import chat_prompt_ids
from frontend.text.generation import Piece, generate
from frontend.text.structured_outputs import (
    ForcedToolCalls, JsonText, check_schema, is_json_grammar, named_tool, named_tool_grammar, requested_grammar,
    required_tools_grammar,
)
from frontend.text.tool_parsers import PARSERS, ToolCall, make_parser


class PlainText:
    def feed(self, text: str) -> list:
        return [text] if text else []

    def finish(self) -> list:
        return []


class ChatPlan:
    """What the request's tools and format mean: the grammar, and how to read each choice's text."""

    def __init__(self, body: ChatCompletionRequest, tool_parser: str, max_schema_depth: int):
        """Checks every schema of the request: a worker thread's work, as it grows with them."""
        for index, tool in enumerate(body.tools or []):
            if tool.function.parameters is not None:
                check_schema(tool.function.parameters, max_schema_depth, f"tools[{index}].function.parameters")
        self.mode = tool_mode(body)
        self.tool_parser = tool_parser
        self.function_name = None
        self.grammar = requested_grammar(body, max_schema_depth)
        if self.mode in ("named", "required") and self.grammar is not None:
            raise HTTPError(400, "a forced tool call and response_format cannot both constrain the output",
                            "response_format")
        if self.mode == "named":
            tool = named_tool(body.tools, body.tool_choice)
            self.function_name = tool.function.name
            self.grammar = named_tool_grammar(tool)
        elif self.mode == "required":
            self.grammar = required_tools_grammar(body.tools, body.parallel_tool_calls)
        if self.mode == "auto" and tool_parser not in PARSERS:
            raise HTTPError(400, "tool_choice auto needs a tool parser: set tool_parser in conf/server.yml "
                                 f"to one of {sorted(PARSERS)}", "tool_choice")

    def reader(self):
        if self.forced:
            return ForcedToolCalls(self.function_name)
        if self.mode == "auto":
            return make_parser(self.tool_parser)
        return JsonText() if is_json_grammar(self.grammar) else PlainText()

    @property
    def forced(self) -> bool:
        """The output is tool calls only: there is never content."""
        return self.mode in ("named", "required")

    def finish_reason(self, finish_reason: str | None, called: bool) -> str | None:
        # OpenAI says "tool_calls" when the model chose to call; a named function was not its choice.
        if called and finish_reason == "stop" and self.mode in ("auto", "required"):
            return "tool_calls"
        return finish_reason


def tool_mode(body: ChatCompletionRequest) -> str:
    if not body.tools:
        if body.tool_choice not in (None, "none"):
            raise HTTPError(400, "tool_choice needs tools", "tool_choice")
        return "none"
    if isinstance(body.tool_choice, NamedToolChoice):
        return "named"
    return body.tool_choice or "auto"


class ChoiceState:
    """One choice as it grows: content, tool calls, logprobs and token count, piece by piece."""

    def __init__(self, index: int, plan: ChatPlan, top_logprobs: int | None, tokenizer):
        self.index = index
        self.plan = plan
        self.reader = plan.reader()
        self.top_logprobs = top_logprobs
        self.tokenizer = tokenizer
        self.content: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.positions: list = []
        self.unsent_positions: list = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.started = False

    def take(self, piece: Piece) -> list[ChatChunkChoice]:
        """The chunks this piece makes; everything is remembered for the whole answer too."""
        events = self.reader.feed(piece.text)
        if piece.finish_reason is not None:
            events += self.reader.finish()
            self.finish_reason = piece.finish_reason
        self.completion_tokens += len(piece.token_ids)
        if self.top_logprobs is not None and piece.logprobs:
            self.positions += piece.logprobs
            self.unsent_positions += piece.logprobs
        deltas = [delta for delta in map(self.delta, events) if delta is not None]
        if not self.started and not deltas:
            deltas = [ChatDelta() if self.plan.forced else ChatDelta(content="")]
        if piece.finish_reason is not None and not deltas:
            deltas = [ChatDelta()]
        return self.chunk_choices(deltas, piece.finish_reason)

    def delta(self, event) -> ChatDelta | None:
        if isinstance(event, ToolCall):
            self.tool_calls.append(event)
            function = StreamedFunction(event.name, event.arguments)
            return ChatDelta(tool_calls=[ToolCallDelta(len(self.tool_calls) - 1, event.id, "function", function)])
        self.content.append(event)
        if self.tool_calls and not event.strip():
            return None  # whitespace between calls: the whole answer drops it too
        return ChatDelta(content=event)

    def chunk_choices(self, deltas: list[ChatDelta], finish_reason: str | None) -> list[ChatChunkChoice]:
        choices = []
        for delta in deltas:
            if not self.started:
                delta.role, self.started = "assistant", True
            choices.append(ChatChunkChoice(self.index, delta, self.take_logprobs()))
        if finish_reason is not None:
            choices[-1].finish_reason = self.plan.finish_reason(finish_reason, bool(self.tool_calls))
        return choices

    def take_logprobs(self):
        if not self.unsent_positions:
            return None
        positions, self.unsent_positions = self.unsent_positions, []
        return chat_logprobs(self.tokenizer, positions, self.top_logprobs)

    def whole(self) -> ChatChoice:
        content = "".join(self.content)
        calls = [ToolCallOut(id=c.id, function=CalledFunction(c.name, c.arguments)) for c in self.tool_calls]
        if self.plan.forced or (calls and not content.strip()):
            content = None
        message = AssistantMessage("assistant", content, tool_calls=calls or None)
        logprobs = None
        if self.top_logprobs is not None:
            logprobs = chat_logprobs(self.tokenizer, self.positions, self.top_logprobs)
        return ChatChoice(self.index, message, logprobs, self.plan.finish_reason(self.finish_reason, bool(calls)))


def check_chat_bounds(body: ChatCompletionRequest, limits: RequestLimits, vocab_size: int) -> None:
    check_count(body.messages, limits.max_messages, "messages", "messages")
    check_count(body.tools, limits.max_tools, "tools", "tools")
    check_generations(1, body.n, limits)
    check_sampling(body, limits, vocab_size, body.n)


def max_tokens_of(state: FrontendState, body: ChatCompletionRequest, prompt_tokens: int) -> int:
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None:
        max_tokens = state.max_model_len - prompt_tokens
        if max_tokens < 1:
            raise HTTPError(400, f"the prompt ({prompt_tokens} tokens) fills the model's context of "
                                 f"{state.max_model_len} tokens", "messages")
    state.check_context(prompt_tokens, max_tokens, field)
    return max_tokens


def top_logprobs_of(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise HTTPError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


async def chat_completions_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, ChatCompletionRequest, state.server.max_body_bytes)
    model = served_model(state, body.model)
    tokenizer, limits = state.tokenizer, state.server.limits
    check_chat_bounds(body, limits, tokenizer.vocab_size)
    plan = await asyncio.to_thread(ChatPlan, body, state.server.tool_parser, limits.max_schema_depth)
    prompt_ids = await chat_prompt_ids(tokenizer, body, state.server)
    top_logprobs = top_logprobs_of(body)
    sampling = sampling_kwargs(body, max_tokens_of(state, body, len(prompt_ids)), plan.grammar, logprobs=top_logprobs)
    specs = choice_specs(body, prompt_ids, sampling)
    choices = [ChoiceState(i, plan, top_logprobs, tokenizer) for i in range(len(specs))]
    run = ChatRun(model, len(prompt_ids), choices)
    pieces = merged([generate(state.client, tokenizer.backend, spec) for spec in specs])
    if body.stream:
        return event_stream(stream_chunks(run, await started(request, pieces), body))
    await unless_disconnected(request, take_all(run.choices, pieces))
    return json_response(run.completion())


class ChatRun:
    def __init__(self, model: str, prompt_tokens: int, choices: list[ChoiceState]):
        self.id = response_id("chatcmpl")
        self.created = now()
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.choices = choices

    def usage(self):
        return usage(self.prompt_tokens, sum(choice.completion_tokens for choice in self.choices))

    def completion(self) -> ChatCompletion:
        return ChatCompletion(id=self.id, created=self.created, model=self.model,
                              choices=[choice.whole() for choice in self.choices], usage=self.usage())

    def chunk(self, choices: list[ChatChunkChoice], with_usage: bool = False) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                   usage=self.usage() if with_usage else None)


async def stream_chunks(run: ChatRun, pieces, body: ChatCompletionRequest):
    options = body.stream_options
    continuous = options is not None and options.continuous_usage_stats
    try:
        async for index, piece in pieces:
            for choice in run.choices[index].take(piece):
                yield event(run.chunk([choice], with_usage=continuous))
    finally:
        await pieces.aclose()
    if options is not None and options.include_usage:
        yield event(run.chunk([], with_usage=True))
