"""POST /v1/completions: OpenAI's text completions, answered whole or streamed as server-sent events.

Each prompt (a text, texts, token ids or lists of them) gets `n` choices, numbered prompt by prompt
as OpenAI does: choice index = prompt index * n + i.
"""
import asyncio
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from frontend.http import HTTPError, json_response, off_the_loop_if, read_json
from frontend.openai.logprobs import CompletionLogprobsBuilder, extend_completion
from frontend.openai.protocol import (
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, StreamOptions, Usage, cached_tokens, now,
    response_id, usage,
)
from frontend.openai.sampling import choice_specs, requested_grammar, sampling_kwargs
from frontend.openai.sse import Chunks, event
from frontend.priorities import ask_priority
from frontend.request_bounds import check_generations, check_sampling, check_token_ids
from frontend.run.answer import Answer, respond
from frontend.run.choices import Choice, Update
from frontend.run.state import FrontendState
from frontend.text.reasoning import Content
from frontend.text.tokenizer import Tokenizer
from frontend.text.tools import text_reader


@dataclass
class Prompt:
    text: str
    ids: list[int]


def completion_logprobs(builder: CompletionLogprobsBuilder, echo: Prompt | None, prompt_logprobs: list | None,
                        positions: list, token_ids: list[int]) -> CompletionLogprobs:
    """The echoed prompt's logprobs, if any, then the generated tokens'."""
    logprobs = CompletionLogprobs([], [], [], [])
    if echo is not None:
        extend_completion(logprobs, builder.build(prompt_logprobs or [None] * len(echo.ids), echo.ids))
    return extend_completion(logprobs, builder.build(positions, token_ids))


class CompletionAnswer(Answer):
    """One completions run as OpenAI shapes it: the chunks while streaming, and the whole answer."""

    def __init__(self, model: str, prompts: list[Prompt], choices: list[Choice], echoes: list[Prompt | None],
                 logprobs: bool, tokenizer: Tokenizer, stream_options: StreamOptions | None):
        self.id = response_id("cmpl")
        self.created = now()
        self.model = model
        self.prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
        self.prompts = len(prompts)
        self.choices = choices
        self.echoes = echoes  # each choice's prompt, when echoed
        self.logprobs = logprobs
        self.tokenizer = tokenizer
        self.stream_options = stream_options

    def renderer(self) -> "CompletionChunks":
        return CompletionChunks(self, self.stream_options)

    def whole_response(self) -> Response:
        return json_response(self.completion())

    def usage(self) -> Usage:
        return usage(self.prompt_tokens, sum(choice.completion_tokens for choice in self.choices),
                     cached_tokens(self.choices, self.prompts))

    def chunk(self, choices: list[CompletionChoice], with_usage: bool = False) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices,
                          usage=self.usage() if with_usage else None)

    def whole(self, choice: Choice) -> CompletionChoice:
        echo = self.echoes[choice.index]
        text = choice.content if echo is None else echo.text + choice.content
        logprobs = None
        if self.logprobs:
            logprobs = completion_logprobs(CompletionLogprobsBuilder(self.tokenizer), echo, choice.prompt_logprobs,
                                           choice.logprobs, choice.token_ids)
        return CompletionChoice(choice.index, text, logprobs, choice.finish_reason, choice.stop_reason)

    def completion(self) -> Completion:
        return self.chunk([self.whole(choice) for choice in self.choices], with_usage=True)


class CompletionChunks(Chunks):
    """Updates as text_completion events; the prompt, when echoed, goes first in each choice."""

    def __init__(self, answer: CompletionAnswer, options: StreamOptions | None):
        super().__init__(answer, options)
        self.unechoed = list(answer.echoes)
        self.builders = [CompletionLogprobsBuilder(answer.tokenizer) for _ in answer.choices]

    def update(self, update: Update) -> list[bytes]:
        text = "".join(item.text for item in update.events if isinstance(item, Content))
        echo, self.unechoed[update.index] = self.unechoed[update.index], None
        logprobs = None
        if self.answer.logprobs:
            logprobs = completion_logprobs(self.builders[update.index], echo, update.prompt_logprobs,
                                           update.logprobs or [], update.token_ids)
        if echo is not None:
            text = echo.text + text
        if not (text or update.finish_reason or logprobs):
            return []
        choice = CompletionChoice(update.index, text, logprobs, update.finish_reason, update.stop_reason)
        return [event(self.answer.chunk([choice], with_usage=self.continuous))]


async def prompts_of(tokenizer: Tokenizer, body: CompletionRequest) -> list[Prompt]:
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and all(isinstance(item, str) for item in prompt)):
        texts = [prompt] if isinstance(prompt, str) else prompt
        ids = await tokenizer.encode_prompts(texts, body.add_special_tokens)
        prompts = [Prompt(text, text_ids) for text, text_ids in zip(texts, ids)]
    elif prompt and (all(isinstance(item, int) for item in prompt) or all(isinstance(item, list) for item in prompt)):
        id_lists = [prompt] if isinstance(prompt[0], int) else prompt
        for ids in id_lists:
            check_token_ids(ids, tokenizer.vocab_size, "prompt")
        texts = [""] * len(id_lists)
        if body.echo:  # only an echo shows the prompt's text: a long prompt of ids costs milliseconds to decode
            texts = await asyncio.to_thread(lambda: [tokenizer.decode(ids, skip_special_tokens=False)
                                                     for ids in id_lists])
        prompts = [Prompt(text, ids) for text, ids in zip(texts, id_lists)]
    else:
        raise HTTPError(400, "prompt must be a text, a list of texts, token ids, or a list of token id lists", "prompt")
    if any(not prompt.ids for prompt in prompts):
        raise HTTPError(400, "the prompt is empty", "prompt")
    return prompts


def check_supported(body: CompletionRequest) -> None:
    if body.suffix:
        raise HTTPError(400, "suffix is not supported", "suffix")


def prompt_count(prompt: str | list) -> int:
    """How many prompts the field holds, counted before any is tokenized."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return 1
    return len(prompt)


async def completions_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, CompletionRequest, state.server.max_body_bytes)
    pool, model = state.pool_for(body.model)
    check_supported(body)
    tokenizer, limits = pool.tokenizer, state.server.limits
    check_generations(prompt_count(body.prompt), body.n, limits)
    check_sampling(body, limits, tokenizer.vocab_size, body.n)
    ask_priority(body.priority, state.server.priority)
    prompts = await prompts_of(tokenizer, body)
    constrained = body.response_format is not None or body.structured_outputs is not None
    grammar = await off_the_loop_if(constrained, requested_grammar, body, limits.max_schema_depth)
    specs, echoes = [], []
    for prompt in prompts:
        pool.check_context(len(prompt.ids), body.max_tokens)
        sampling = sampling_kwargs(body, body.max_tokens, grammar, logprobs=body.logprobs,
                                   prompt_logprobs=body.logprobs if body.echo else None)
        specs += choice_specs(body, prompt.ids, sampling)
        echoes += [prompt if body.echo else None] * body.n
    choices = [Choice(i, text_reader(grammar)) for i in range(len(specs))]
    answer = CompletionAnswer(model, prompts, choices, echoes, body.logprobs is not None, tokenizer,
                              body.stream_options)
    return await respond(request, pool, specs, choices, answer, body.stream)
