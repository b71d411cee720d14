"""The one generation run every protocol renders from.

A request's choices are generated side by side; each choice reads its text (reasoning first, when a
reasoning parser is set, then tool calls or plain text) and turns every Piece into an Update: what
is new in that choice, as Content, Reasoning and ToolCall events. Protocols render Updates into
their own chunks while streaming, and read the finished Choices for a whole answer
(frontend/run/answer.py).
"""
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request

from common.config import ServerConfig
from common.messages import TokenLogprob
from frontend.http import unless_disconnected
from frontend.run.fan_out import merged
from frontend.run.generation import GenerationSpec, Piece, generate
from frontend.run.pool import Pool
from frontend.text.reasoning import Content, Reasoning, prompt_tail
from frontend.text.tool_parsers import ToolCall
from frontend.text.tools import PlainText, ToolPlan


Event = Content | Reasoning | ToolCall


@dataclass
class Update:
    index: int  # the choice's
    events: list[Event]
    token_ids: list[int]  # this piece's
    completion_tokens: int  # the choice's so far
    finish_reason: str | None = None
    logprobs: list[list[TokenLogprob]] | None = None
    prompt_logprobs: list[list[TokenLogprob] | None] | None = None
    stop_reason: int | str | None = None  # vLLM's: the stop string or stop token id that ended it
    prompt_tokens: int | None = None  # the engine's count of the prompt, where it differs from the frontend's


class Choice:
    """One choice as it grows, piece by piece: its content, reasoning, tool calls, tokens and logprobs.

    `reader` finds tool calls in the text (feed(text) -> list[str | ToolCall], finish()); a
    `reasoning_parser` (feed(text) -> list[Content | Reasoning], finish()) splits thinking out first."""

    def __init__(self, index: int, reader=None, reasoning_parser=None):
        self.index = index
        self.reader = reader if reader is not None else PlainText()
        self.reasoning_parser = reasoning_parser
        self.contents: list[str] = []
        self.thoughts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.token_ids: list[int] = []
        self.logprobs: list[list[TokenLogprob]] = []
        self.prompt_logprobs: list[list[TokenLogprob] | None] | None = None
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @property
    def content(self) -> str:
        return "".join(self.contents)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)

    def take(self, piece: Piece) -> Update:
        finished = piece.finish_reason is not None
        if self.reasoning_parser is None:
            events = self.read([Content(piece.text)], finished)
        else:
            split = self.reasoning_parser.feed(piece.text)
            if finished:
                split += self.reasoning_parser.finish()
            events = self.read(split, finished)
        for event in events:
            if isinstance(event, Content):
                self.contents.append(event.text)
            elif isinstance(event, Reasoning):
                self.thoughts.append(event.text)
            else:
                self.tool_calls.append(event)
        if self.prompt_logprobs is None:
            self.prompt_logprobs = piece.prompt_logprobs
        self.token_ids += piece.token_ids
        self.logprobs += piece.logprobs or []
        self.completion_tokens += len(piece.token_ids)
        if finished:
            self.finish_reason, self.stop_reason = piece.finish_reason, piece.stop_reason
        return Update(self.index, events, piece.token_ids, self.completion_tokens, piece.finish_reason,
                      piece.logprobs, piece.prompt_logprobs, piece.stop_reason, piece.prompt_tokens)

    def read(self, split: list[Content | Reasoning], finished: bool) -> list[Event]:
        """The reader's events for the content, reasoning passed by as it is."""
        events: list[Event] = []
        for part in split:
            if isinstance(part, Reasoning):
                events.append(part)
            else:
                events += map(as_event, self.reader.feed(part.text))
        if finished:
            events += map(as_event, self.reader.finish())
        return events


def as_event(item: str | ToolCall) -> Event:
    return Content(item) if isinstance(item, str) else item


def chat_choices(server: ServerConfig, pool: Pool, plan: ToolPlan, prompt_ids: list[int],
                 count: int) -> list[Choice]:
    """`count` choices of a chat: each reads its text as the tool plan says, its thinking split out first
    when server.yml names a reasoning parser (which reads the prompt's end for a marker left open)."""
    reasoning = server.reasoning_parser
    tail = prompt_tail(pool.tokenizer, prompt_ids) if reasoning else ""
    return [Choice(i, plan.reader(), plan.reasoning_parser(reasoning, tail)) for i in range(count)]


async def run_choices(request: Request, pool: Pool, specs: list[GenerationSpec],
                      choices: list[Choice]) -> AsyncIterator[Update]:
    """Generate choice i from specs[i] on the pool's engines; the Updates in the order they come. The
    first is awaited here, before any byte is sent, so that a refusal is still an HTTP error."""
    pieces = merged([generate(pool.client, pool.tokenizer.backend, spec) for spec in specs])

    async def updates():
        try:
            async for index, piece in pieces:
                yield choices[index].take(piece)
        finally:
            await pieces.aclose()

    stream = updates()
    first = await unless_disconnected(request, anext(stream))

    async def first_then_rest():
        try:
            yield first
            async for update in stream:
                yield update
        finally:
            await stream.aclose()

    return first_then_rest()


async def run_to_end(request: Request, updates: AsyncIterator[Update], take: Callable[[Update], object]) -> None:
    """Run every choice to its end (whole answers), handing each Update to `take`; a client that leaves
    cancels them."""

    async def drain():
        try:
            async for update in updates:
                take(update)
        finally:
            await updates.aclose()

    await unless_disconnected(request, drain())
