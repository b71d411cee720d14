"""The tail every endpoint shares: run the choices, then answer in the protocol's own shape, streamed
or whole.

A protocol gives an Answer: a Renderer for its stream's wire format, and its whole answer once every
choice has ended (built from the Choices, or from each Update handed to `take`).
"""
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from frontend.http import HTTPError, event_stream
from frontend.run.choices import Choice, Update, run_choices, run_to_end
from frontend.run.errors import HANDLED, as_http_error
from frontend.run.generation import GenerationSpec
from frontend.run.pool import Pool


class Renderer(Protocol):
    """A protocol's streamed wire format."""

    def update(self, update: Update) -> Iterable[bytes]: ...

    def last(self) -> Iterable[bytes]: ...  # after the last update

    def error(self, error: HTTPError) -> Iterable[bytes]: ...  # the status line has gone out

    def end(self) -> Iterable[bytes]: ...  # after everything, error or not


class Answer(ABC):
    """What an endpoint makes of its run."""

    @abstractmethod
    def renderer(self) -> Renderer:
        """A fresh renderer of the stream."""

    @abstractmethod
    def whole_response(self) -> Response:
        """The whole answer, once every choice has ended."""

    def take(self, update: Update) -> None:
        """Each Update of a whole answer, for an answer built from them rather than from the Choices."""

    def count_prompt(self, tokens: int) -> None:
        """The engine's count of the prompt, where it differs from the frontend's: vLLM's processor
        expanded its images into the model's placeholder tokens. Usage says what the model ran."""
        self.prompt_tokens = tokens

    def streaming_response(self, chunks: AsyncIterator[bytes]) -> Response:
        return event_stream(chunks)


async def respond(request: Request, pool: Pool, specs: list[GenerationSpec], choices: list[Choice],
                  answer: Answer, stream: bool) -> Response:
    """Generate choice i from specs[i] on the pool's engines, and answer: streamed, or whole once every
    choice has ended."""
    updates = counted(await run_choices(request, pool, specs, choices), answer)
    if stream:
        return answer.streaming_response(rendered(updates, answer.renderer()))
    await run_to_end(request, updates, answer.take)
    return answer.whole_response()


async def counted(updates: AsyncIterator[Update], answer: Answer) -> AsyncIterator[Update]:
    """The updates, the engine's count of the prompt handed to the answer: the first one only, as a
    generation moved to another engine is counted there with the tokens it had generated."""
    told = False
    try:
        async for update in updates:
            if update.prompt_tokens is not None and not told:
                answer.count_prompt(update.prompt_tokens)
                told = True
            yield update
    finally:
        await updates.aclose()


async def rendered(updates: AsyncIterator[Update], renderer: Renderer) -> AsyncIterator[bytes]:
    """The one streaming path: each Update in the renderer's format, a failure as its error chunk."""
    try:
        try:
            async for update in updates:
                for chunk in renderer.update(update):
                    yield chunk
        finally:
            await updates.aclose()
        for chunk in renderer.last():
            yield chunk
    except HANDLED as error:
        for chunk in renderer.error(as_http_error(error)):
            yield chunk
    for chunk in renderer.end():
        yield chunk
