"""HTTP plumbing every route shares: error bodies, bounded body reading, typed JSON decoding,
waiting on a client that may leave, and the streaming response every protocol's events go out in."""
import asyncio
import json
import re
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "invalid_request_error", 415: "invalid_request_error", 431: "invalid_request_error", 429: "rate_limit_exceeded", 503: "service_unavailable", 504: "timeout"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, self.message, self.param), self.status, headers=self.headers)


def header_number(value: str | bytes | None, max_digits: int = 18) -> int | None:
    """A header's value as a non-negative integer; None when it is not one of at most `max_digits`
    digits (a longer number would be over any bound here, and Python refuses to parse 4,300 digits)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    found = re.fullmatch(r"\s*([0-9]{1,%d})\s*" % max_digits, text)
    return int(found.group(1)) if found else None


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape; `param` names the offending field."""
    kind = ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


async def read_json(request: Request, kind: type, max_bytes: int):
    """Decode the body straight into `kind`; every problem is a 4xx that names the field."""
    # Required, never assumed: a web page can send any other type (or none) without asking the
    # browser's CORS preflight first, so a JSON route must not read such a body.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        given = f"not {content_type[:100]!r}" if content_type else "and the request has none"
        raise HTTPError(415, f"content-type must be application/json, {given}", "content-type")
    length = header_number(request.headers.get("content-length", "0"))
    if length is None:
        raise HTTPError(400, "content-length must be a number of bytes", "content-length")
    if length > max_bytes:
        raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
    try:
        return msgspec.json.decode(bytes(body), type=kind)
    except msgspec.ValidationError as error:
        raise HTTPError(400, str(error), field_of(str(error))) from None
    except RecursionError:
        field = await asyncio.to_thread(deepest_field, bytes(body))
        raise HTTPError(400, f"{field} nests too deeply to be read", field) from None
    except msgspec.DecodeError as error:
        raise HTTPError(400, f"the body is not valid JSON: {error}", "body") from None
    except UnicodeDecodeError as error:
        raise HTTPError(400, f"the body is not valid UTF-8: {error}", "body") from None


def deepest_field(body: bytes) -> str:
    """The top-level field of a JSON object body that nests deepest, found by scanning its
    strings and brackets: for bodies too deep to decode, so that the 400 still names the field."""
    depth = deepest = 0
    last_string, top_field, field = b"", b"", b""
    for token in re.finditer(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', body):
        text = token.group()
        if text[0] == ord('"'):
            last_string = text if depth == 1 else last_string
        elif text in b"[{":
            depth += 1
            top_field = last_string if depth == 2 else top_field
            if depth > deepest:
                deepest, field = depth, top_field
        else:
            depth -= 1
    try:
        return json.loads(field) or "body"
    except ValueError:
        return "body"


def field_of(message: str) -> str:
    """The field a msgspec error names: '... - at `$.messages[0].role`' or 'unknown field `x`'."""
    found = re.search(r"at `\$\.?([^`]*)`", message) or re.search(r"field `([^`]*)`", message)
    return (found.group(1) if found else "") or "body"


async def until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def off_the_loop_if(grows: bool, function, *args):
    """`function(*args)` on a worker thread when its work grows with what the client sent (`grows`),
    else here: the hop to a thread and back costs a lone request a few tenths of a millisecond."""
    if grows:
        return await asyncio.to_thread(function, *args)
    return function(*args)


async def unless_disconnected(request: Request, awaitable):
    """Await `awaitable`; if the client leaves first, cancel it (its cleanup runs) and raise."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(until_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientDisconnect()
    return work.result()


def json_response(value) -> Response:
    """A msgspec Struct (or anything msgspec encodes) as a JSON answer."""
    return Response(msgspec.json.encode(value), media_type="application/json")


class ImmediateStreamingResponse(StreamingResponse):
    """A StreamingResponse whose status line and first chunk go out in the task that returned it, at
    once. A route returns its stream once the first output is in hand (so that a refusal is still an
    HTTP error); Starlette's response would then start a task, and a task group listening for the
    client's disconnect, before sending a byte: a turn of the event loop and that set-up on every
    stream's time to first token. The rest streams as Starlette streams it, disconnect listener and all."""

    async def __call__(self, scope, receive, send) -> None:
        first = await anext(self.body_iterator, None)
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if first is not None:
            await self.send_chunk(send, first)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send) -> None:  # the status line went out above
        async for chunk in self.body_iterator:
            await self.send_chunk(send, chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send_chunk(self, send, chunk: str | bytes | memoryview) -> None:
        body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": body, "more_body": True})


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Server-sent events, whatever protocol wrote them."""
    return ImmediateStreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
