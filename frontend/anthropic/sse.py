"""Server-sent events as Anthropic streams them: `event: <type>` then `data: <json>` per event, and
no end marker (message_stop is the last event). A failure after the first byte, when the status line
has gone out, becomes an `error` event in Anthropic's error shape, and the stream ends there."""
import msgspec

from frontend.anthropic.protocol import error_body
from frontend.http import HTTPError

encode = msgspec.json.Encoder().encode


def event(item) -> bytes:
    """One event; its name is its `type` tag."""
    return b"event: " + type(item).__struct_config__.tag.encode() + b"\ndata: " + encode(item) + b"\n\n"


def error_event(error: HTTPError) -> bytes:
    return event(error_body(error.status, error.message, error.param))
