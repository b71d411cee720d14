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

    def streaming_response(self, chunks: AsyncIterator[bytes]) -> Response:
        return event_stream(chunks)


async def respond(request: Request, pool: Pool, specs: list[GenerationSpec], choices: list[Choice],
                  answer: Answer, stream: bool) -> Response:
    """Generate choice i from specs[i] on the pool's engines, and answer: streamed, or whole once every
    choice has ended."""
    updates = await run_choices(request, pool, specs, choices)
    if stream:
        return answer.streaming_response(rendered(updates, answer.renderer()))
    await run_to_end(request, updates, answer.take)
    return answer.whole_response()


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
