"""Server-sent events as OpenAI streams them: one `data:` line of JSON per chunk and `data: [DONE]`
last. A failure after the first byte, when the status line has gone out, becomes a chunk in
OpenAI's error shape before the [DONE]."""
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import StreamingResponse

from frontend.errors import HANDLED, as_http_error
from frontend.http import error_body, unless_disconnected

DONE = b"data: [DONE]\n\n"
encode = msgspec.json.Encoder().encode


def event(chunk) -> bytes:
    return b"data: " + encode(chunk) + b"\n\n"


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except HANDLED as error:
        error = as_http_error(error)
        yield event(error_body(error.status, error.message))
    finally:
        await chunks.aclose()
    yield DONE


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events(chunks), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def started(request: Request, items: AsyncIterator) -> AsyncIterator:
    """Wait for the first item before the stream begins, so that a refusal is still an HTTP error."""
    first = await unless_disconnected(request, anext(items))

    async def first_then_rest():
        try:
            yield first
            async for item in items:
                yield item
        finally:
            await items.aclose()

    return first_then_rest()
