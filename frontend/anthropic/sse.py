"""Server-sent events as Anthropic streams them: `event: <type>` then `data: <json>` per event, and
no end marker (message_stop is the last event). A failure after the first byte, when the status line
has gone out, becomes an `error` event in Anthropic's error shape, and the stream ends there."""
from collections.abc import AsyncIterator

import msgspec
from starlette.responses import StreamingResponse

from frontend.anthropic.protocol import error_body
from frontend.errors import HANDLED, as_http_error

encode = msgspec.json.Encoder().encode


def event(item) -> bytes:
    """One event; its name is its `type` tag."""
    return b"event: " + type(item).__struct_config__.tag.encode() + b"\ndata: " + encode(item) + b"\n\n"


def error_event(error: Exception) -> bytes:
    error = as_http_error(error)
    return event(error_body(error.status, error.message, error.param))


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except HANDLED as error:
        yield error_event(error)
    finally:
        await chunks.aclose()


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events(chunks), media_type="text/event-stream", headers={"cache-control": "no-cache"})
