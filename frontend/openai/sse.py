"""Server-sent events as OpenAI streams them: one `data:` line of JSON per chunk and `data: [DONE]`
last. A failure after the first byte, when the status line has gone out, becomes a chunk in
OpenAI's error shape before the [DONE]."""

import msgspec

from frontend.http import HTTPError, error_body

DONE = b"data: [DONE]\n\n"
encode = msgspec.json.Encoder().encode


def event(chunk) -> bytes:
    return b"data: " + encode(chunk) + b"\n\n"


def error_event(error: HTTPError) -> list[bytes]:
    return [event(error_body(error.status, error.message))]


def done() -> list[bytes]:
    return [DONE]


class Chunks:
    """What chat's and completions' streams share: usage in each chunk when `continuous_usage_stats`,
    a last chunk with the usage when `include_usage`, an error chunk, and [DONE]. `answer` makes the
    chunks (`chunk(choices, with_usage)`)."""

    def __init__(self, answer, options):
        self.answer = answer
        self.options = options
        self.continuous = options is not None and options.continuous_usage_stats

    def last(self) -> list[bytes]:
        if self.options is not None and self.options.include_usage:
            return [event(self.answer.chunk([], with_usage=True))]
        return []

    error = staticmethod(error_event)
    end = staticmethod(done)
