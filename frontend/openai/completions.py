"""POST /v1/completions: OpenAI's text completions, answered whole or streamed as server-sent events.

Each prompt (a text, texts, token ids or lists of them) gets `n` choices, numbered prompt by prompt
as OpenAI does: choice index = prompt index * n + i.
"""
import asyncio
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from frontend.fan_out import merged, take_all
from frontend.http import HTTPError, json_response, read_json, unless_disconnected
from frontend.openai.logprobs import CompletionLogprobsBuilder, extend_completion
from frontend.openai.models import served_model
from frontend.openai.protocol import (
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage, now, response_id, usage,
)
from frontend.openai.sampling import choice_specs, sampling_kwargs
from frontend.openai.sse import event, event_stream, started
from frontend.request_bounds import check_generations, check_sampling, check_token_ids
from frontend.state import FrontendState
from frontend.text.generation import Piece, generate
from frontend.text.structured_outputs import JsonText, is_json_grammar, requested_grammar
from frontend.text.tokenizer import Tokenizer


@dataclass
class Prompt:
    text: str
    ids: list[int]


class ChoiceState:
    """One choice as it grows: its text, logprobs and token count, piece by piece."""

    def __init__(self, index: int, prompt: Prompt, body: CompletionRequest, tokenizer: Tokenizer, grammar: dict | None):
        self.index = index
        self.echo = prompt if body.echo else None
        self.json = JsonText() if is_json_grammar(grammar) else None
        self.logprobs = CompletionLogprobsBuilder(tokenizer) if body.logprobs is not None else None
        self.text: list[str] = []
        self.all_logprobs: CompletionLogprobs | None = None
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def take(self, piece: Piece) -> CompletionChoice:
        """The chunk this piece makes, remembered for the whole answer too."""
        text = "".join(self.json.feed(piece.text)) if self.json else piece.text
        logprobs = self.piece_logprobs(piece)
        if self.echo is not None:
            text, self.echo = self.echo.text + text, None
        self.text.append(text)
        if logprobs is not None:
            self.all_logprobs = extend_completion(self.all_logprobs, logprobs)
        self.completion_tokens += len(piece.token_ids)
        self.finish_reason = piece.finish_reason
        return CompletionChoice(self.index, text, logprobs, piece.finish_reason)

    def piece_logprobs(self, piece: Piece) -> CompletionLogprobs | None:
        if self.logprobs is None:
            return None
        logprobs = CompletionLogprobs([], [], [], [])
        if self.echo is not None:
            ids = self.echo.ids
            extend_completion(logprobs, self.logprobs.build(piece.prompt_logprobs or [None] * len(ids), ids))
        return extend_completion(logprobs, self.logprobs.build(piece.logprobs or [], piece.token_ids))

    def whole(self) -> CompletionChoice:
        return CompletionChoice(self.index, "".join(self.text), self.all_logprobs, self.finish_reason)


class CompletionRun:
    def __init__(self, model: str, prompts: list[Prompt], choices: list[ChoiceState]):
        self.id = response_id("cmpl")
        self.created = now()
        self.model = model
        self.prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
        self.choices = choices

    def usage(self) -> Usage:
        return usage(self.prompt_tokens, sum(choice.completion_tokens for choice in self.choices))

    def chunk(self, choices: list[CompletionChoice], with_usage: bool = False) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices,
                          usage=self.usage() if with_usage else None)


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
        texts = await asyncio.to_thread(lambda: [tokenizer.decode(ids, skip_special_tokens=False) for ids in id_lists])
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
    model = served_model(state, body.model)
    check_supported(body)
    tokenizer, limits = state.tokenizer, state.server.limits
    check_generations(prompt_count(body.prompt), body.n, limits)
    check_sampling(body, limits, tokenizer.vocab_size, body.n)
    prompts = await prompts_of(tokenizer, body)
    grammar = await asyncio.to_thread(requested_grammar, body, limits.max_schema_depth)
    choices, streams = [], []
    for prompt in prompts:
        state.check_context(len(prompt.ids), body.max_tokens)
        sampling = sampling_kwargs(body, body.max_tokens, grammar, logprobs=body.logprobs,
                                   prompt_logprobs=body.logprobs if body.echo else None)
        for spec in choice_specs(body, prompt.ids, sampling):
            choices.append(ChoiceState(len(choices), prompt, body, tokenizer, grammar))
            streams.append(generate(state.client, tokenizer.backend, spec))
    run = CompletionRun(model, prompts, choices)
    pieces = merged(streams)
    if body.stream:
        return event_stream(stream_chunks(run, await started(request, pieces), body))
    await unless_disconnected(request, take_all(run.choices, pieces))
    return json_response(run.chunk([choice.whole() for choice in choices], with_usage=True))


async def stream_chunks(run: CompletionRun, pieces, body: CompletionRequest):
    options = body.stream_options
    continuous = options is not None and options.continuous_usage_stats
    try:
        async for index, piece in pieces:
            choice = run.choices[index].take(piece)
            if choice.text or choice.finish_reason or choice.logprobs:
                yield event(run.chunk([choice], with_usage=continuous))
    finally:
        await pieces.aclose()
    if options is not None and options.include_usage:
        yield event(run.chunk([], with_usage=True))
