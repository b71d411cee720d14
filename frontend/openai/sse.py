"""Server-sent events as OpenAI streams them: one `data:` line of JSON per chunk and `data: [DONE]`
last. A failure after the first byte, when the status line has gone out, becomes a chunk in
OpenAI's error shape before the [DONE]."""
from collections.abc import AsyncIterator

import msgspec
from starlette.responses import StreamingResponse

from frontend.http import HTTPError, error_body

DONE = b"data: [DONE]\n\n"
encode = msgspec.json.Encoder().encode


def event(chunk) -> bytes:
    return b"data: " + encode(chunk) + b"\n\n"


def error_event(error: HTTPError) -> list[bytes]:
    return [event(error_body(error.status, error.message))]


def done() -> list[bytes]:
    return [DONE]


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
