"""Server-sent events as Anthropic streams them: `event: <type>` then `data: <json>` per event, and
no end marker (message_stop is the last event). A failure after the first byte, when the status line
has gone out, becomes an `error` event in Anthropic's error shape, and the stream ends there."""
from collections.abc import AsyncIterator, Iterable

import msgspec

from frontend.anthropic.messages import MessageBuilder
from frontend.anthropic.protocol import error_body
from frontend.http import HTTPError
from frontend.run.choices import Update, rendered

encode = msgspec.json.Encoder().encode


def event(item) -> bytes:
    """One event; its name is its `type` tag."""
    return b"event: " + type(item).__struct_config__.tag.encode() + b"\ndata: " + encode(item) + b"\n\n"


def error_event(error: HTTPError) -> bytes:
    return event(error_body(error.status, error.message, error.param))


class EventRenderer:
    """The run's Updates as Anthropic's events (a Renderer of frontend.run.choices)."""

    def __init__(self, builder: MessageBuilder):
        self.builder = builder

    def update(self, update: Update) -> Iterable[bytes]:
        return map(event, self.builder.take(update))

    def last(self) -> Iterable[bytes]:
        return []  # message_stop came with the finishing Update

    def error(self, error: HTTPError) -> Iterable[bytes]:
        return [error_event(error)]

    def end(self) -> Iterable[bytes]:
        return []


async def message_events(builder: MessageBuilder, updates: AsyncIterator[Update]) -> AsyncIterator[bytes]:
    for item in builder.start():
        yield event(item)
    async for chunk in rendered(updates, EventRenderer(builder)):
        yield chunk

