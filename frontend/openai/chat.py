"""POST /v1/chat/completions: chat with the model's template, tools and structured output, answered
whole or streamed as server-sent events.

The request's tools, tool_choice and response_format become a ToolPlan (frontend/text/tools.py),
which says how each choice's text is read; a forced call streams as one whole tool-call delta.
"""

from starlette.requests import Request
from starlette.responses import Response

from common.config import RequestLimits
from frontend.http import HTTPError, json_response, off_the_loop_if, read_json
from frontend.openai.logprobs import chat_logprobs
from frontend.openai.protocol import (
    AssistantMessage, CalledFunction, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatDelta, ChatLogprobs, ChatMessage, NamedToolChoice, StreamedFunction, StreamOptions,
    ToolCallDelta, ToolCallOut, Usage, as_chat, cached_tokens, now, response_id, usage,
)
from frontend.openai.sampling import choice_specs, requested_grammar, sampling_kwargs
from frontend.openai.sse import Chunks, event
from frontend.priorities import ask_priority
from frontend.request_bounds import check_content_blocks, check_count, check_generations, check_sampling
from frontend.run.answer import Answer, respond
from frontend.run.choices import Choice, Update, chat_choices
from frontend.run.pool import Pool
from frontend.run.state import FrontendState
from frontend.media import chat_prompt
from frontend.text.reasoning import Reasoning
from frontend.text.tokenizer import Tokenizer
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import FunctionTool, ToolPlan


def tool_plan(body: ChatCompletionRequest, tool_parser: str, max_schema_depth: int) -> ToolPlan:
    """The request's tools, tool_choice and response_format as a ToolPlan: a worker thread's work,
    as checking the schemas grows with them."""
    tools = [FunctionTool(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []]
    grammar = requested_grammar(body, max_schema_depth)
    return ToolPlan(tools, tool_choice_of(body), body.parallel_tool_calls is not False, grammar, tool_parser,
                    max_schema_depth)


def tool_choice_of(body: ChatCompletionRequest) -> str:
    if not body.tools:
        if body.tool_choice not in (None, "none"):
            raise HTTPError(400, "tool_choice needs tools", "tool_choice")
        return "none"
    if isinstance(body.tool_choice, NamedToolChoice):
        return body.tool_choice.function.name
    return body.tool_choice or "auto"


def finish_reason_of(plan: ToolPlan, finish_reason: str | None, called: bool) -> str | None:
    # OpenAI says "tool_calls" when the model chose to call; a named function was not its choice.
    if called and finish_reason == "stop" and plan.choice in ("auto", "required"):
        return "tool_calls"
    return finish_reason


def check_bounds(body: ChatCompletionRequest, limits: RequestLimits, vocab_size: int) -> None:
    check_messages(body.messages, limits)
    check_count(body.tools, limits.max_tools, "tools", "tools")
    check_generations(1, body.n, limits)
    check_sampling(body, limits, vocab_size, body.n)


def check_messages(messages: list[ChatMessage], limits: RequestLimits) -> None:
    check_count(messages, limits.max_messages, "messages", "messages")
    check_content_blocks(((f"messages[{index}]", blocks_of(message)) for index, message in enumerate(messages)),
                         limits, "messages")


def blocks_of(message: ChatMessage) -> int:
    """Its content parts and tool calls."""
    parts = len(message.content) if isinstance(message.content, list) else 0
    return parts + len(message.tool_calls or [])


def requested_max_tokens(body: ChatCompletionRequest) -> tuple[int | None, str]:
    """The cap the request gives, if any, and the field that gives it."""
    if body.max_completion_tokens is not None:
        return body.max_completion_tokens, "max_completion_tokens"
    return body.max_tokens, "max_tokens"


def max_tokens_of(pool: Pool, prompt_tokens: int, max_tokens: int | None, field: str) -> int:
    """The requested cap (named `field`), checked against the context, or what the context leaves."""
    if max_tokens is None:
        max_tokens = pool.max_model_len - prompt_tokens
        if max_tokens < 1:
            raise HTTPError(400, f"the prompt ({prompt_tokens} tokens) fills the model's context of "
                                 f"{pool.max_model_len} tokens", "messages")
    pool.check_context(prompt_tokens, max_tokens, field)
    return max_tokens


def top_logprobs_of(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise HTTPError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


async def chat_completions_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, ChatCompletionRequest, state.server.max_body_bytes)
    pool, model = state.pool_for(body.model)
    tokenizer, limits = pool.tokenizer, state.server.limits
    check_bounds(body, limits, tokenizer.vocab_size)
    ask_priority(body.priority, state.server.priority)
    constrained = bool(body.tools) or body.response_format is not None or body.structured_outputs is not None
    plan = await off_the_loop_if(constrained, tool_plan, body, state.server.tool_parser, limits.max_schema_depth)
    prompt_ids, images = await chat_prompt(pool, as_chat(body), state.server, body.n)
    top_logprobs = top_logprobs_of(body)
    max_tokens = max_tokens_of(pool, len(prompt_ids), *requested_max_tokens(body))
    sampling = sampling_kwargs(body, max_tokens, plan.grammar, logprobs=top_logprobs)
    specs = choice_specs(body, prompt_ids, sampling, images)
    choices = chat_choices(state.server, pool, plan, prompt_ids, len(specs))
    answer = ChatAnswer(model, len(prompt_ids), plan, choices, top_logprobs, tokenizer, body.stream_options)
    return await respond(request, pool, specs, choices, answer, body.stream)


class ChatAnswer(Answer):
    """One chat run as OpenAI shapes it: the whole completion, and the chunks' common fields."""

    def __init__(self, model: str, prompt_tokens: int, plan: ToolPlan, choices: list[Choice], top_logprobs: int | None,
                 tokenizer: Tokenizer, stream_options: StreamOptions | None):
        self.id = response_id("chatcmpl")
        self.created = now()
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.plan = plan
        self.choices = choices
        self.top_logprobs = top_logprobs
        self.tokenizer = tokenizer
        self.stream_options = stream_options

    def renderer(self) -> "ChatChunks":
        return ChatChunks(self, self.stream_options)

    def whole_response(self) -> Response:
        return json_response(self.completion())

    def usage(self) -> Usage:
        return usage(self.prompt_tokens, sum(choice.completion_tokens for choice in self.choices),
                     cached_tokens(self.choices))

    def logprobs(self, positions: list) -> ChatLogprobs | None:
        if self.top_logprobs is None:
            return None
        return chat_logprobs(self.tokenizer, positions, self.top_logprobs)

    def whole(self, choice: Choice) -> ChatChoice:
        content = choice.content
        calls = [ToolCallOut(id=c.id, function=CalledFunction(c.name, c.arguments)) for c in choice.tool_calls]
        # As vLLM: no answer after the thinking is a null content, no thinking a null reasoning.
        if self.plan.forced or (calls and not content.strip()) or (choice.reasoning_parser and not content):
            content = None
        reasoning = choice.reasoning or None
        message = AssistantMessage("assistant", content, calls or None, reasoning, reasoning)
        finish_reason = finish_reason_of(self.plan, choice.finish_reason, bool(calls))
        return ChatChoice(choice.index, message, self.logprobs(choice.logprobs), finish_reason, choice.stop_reason)

    def completion(self) -> ChatCompletion:
        return ChatCompletion(id=self.id, created=self.created, model=self.model,
                              choices=[self.whole(choice) for choice in self.choices], usage=self.usage())

    def chunk(self, choices: list[ChatChunkChoice], with_usage: bool = False) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                   usage=self.usage() if with_usage else None)


class StreamedChoice:
    """What one choice's stream has sent so far."""

    def __init__(self):
        self.started = False
        self.calls = 0
        self.unsent_logprobs: list = []


class ChatChunks(Chunks):
    """Updates as chat.completion.chunk events."""

    def __init__(self, answer: ChatAnswer, options: StreamOptions | None):
        super().__init__(answer, options)
        self.streamed = [StreamedChoice() for _ in answer.choices]

    def update(self, update: Update) -> list[bytes]:
        streamed = self.streamed[update.index]
        if self.answer.top_logprobs is not None and update.logprobs:
            streamed.unsent_logprobs += update.logprobs
        deltas = [delta for delta in (self.delta(streamed, event) for event in update.events) if delta is not None]
        if not streamed.started and not deltas:
            deltas = [ChatDelta() if self.answer.plan.forced else ChatDelta(content="")]
        if update.finish_reason is not None and not deltas:
            deltas = [ChatDelta()]
        choices = []
        for delta in deltas:
            if not streamed.started:
                delta.role, streamed.started = "assistant", True
            logprobs, streamed.unsent_logprobs = streamed.unsent_logprobs, []
            choices.append(ChatChunkChoice(update.index, delta, self.answer.logprobs(logprobs) if logprobs else None))
        if update.finish_reason is not None:
            choices[-1].finish_reason = finish_reason_of(self.answer.plan, update.finish_reason, streamed.calls > 0)
            choices[-1].stop_reason = update.stop_reason
        return [event(self.answer.chunk([choice], with_usage=self.continuous)) for choice in choices]

    @staticmethod
    def delta(streamed: StreamedChoice, item) -> ChatDelta | None:
        if isinstance(item, ToolCall):
            function = StreamedFunction(item.name, item.arguments)
            streamed.calls += 1
            return ChatDelta(tool_calls=[ToolCallDelta(streamed.calls - 1, item.id, "function", function)])
        if isinstance(item, Reasoning):
            return ChatDelta(reasoning=item.text, reasoning_content=item.text)
        if streamed.calls and not item.text.strip():
            return None  # whitespace between calls: the whole answer drops it too
        return ChatDelta(content=item.text)
