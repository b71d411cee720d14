"""Each endpoint's Answer, as the shared tail (frontend/run/answer.py) uses it: the same run answered
whole and streamed, in the protocol's own shape, without an engine."""
import json

import msgspec
import pytest

from frontend.anthropic.messages import MessageBuilder
from frontend.grps.generate import GeneratedText
from frontend.openai.chat import ChatAnswer
from frontend.openai.completions import CompletionAnswer, Prompt
from frontend.openai.responses import ResponsesRequest, ResponseWriter
from frontend.run.answer import rendered
from frontend.run.choices import Choice
from frontend.run.generation import Piece
from frontend.text.tools import ToolPlan

PIECES = [Piece("Hel", [1]), Piece("lo", [2], "stop")]


def chat(choices, stream):
    return ChatAnswer("m", 3, ToolPlan([], "none", True, None, "hermes", 16), choices, None, None, None)


def completion(choices, stream):
    return CompletionAnswer("m", [Prompt("Hi", [7, 8, 9])], choices, [None], False, None, None)


def response(choices, stream):
    body = msgspec.json.decode(b'{"model": "m", "input": "Hi"}', type=ResponsesRequest)
    return ResponseWriter(body, "m", 3, False, stream)


def message(choices, stream):
    return MessageBuilder("m", 3)


def generated(choices, stream):
    return GeneratedText(choices[0], 3, as_json=True)


WHOLE_TEXT = {  # where each protocol's whole answer holds the text
    chat: lambda body: body["choices"][0]["message"]["content"],
    completion: lambda body: body["choices"][0]["text"],
    response: lambda body: body["output"][0]["content"][0]["text"],
    message: lambda body: body["content"][0]["text"],
    generated: lambda body: body["text"],
}


def run(make, stream: bool):
    """An answer made as its endpoint makes it, and the Updates its one choice makes of PIECES."""
    choices = [Choice(0)]
    return make(choices, stream), [choices[0].take(piece) for piece in PIECES]


@pytest.mark.parametrize("make", WHOLE_TEXT)
def test_a_whole_answer_holds_the_text_in_its_protocols_shape(make):
    answer, updates = run(make, stream=False)
    for update in updates:
        answer.take(update)
    assert WHOLE_TEXT[make](json.loads(answer.whole_response().body)) == "Hello"


@pytest.mark.parametrize("make", WHOLE_TEXT)
async def test_a_streamed_answer_carries_the_text(make):
    answer, updates = run(make, stream=True)

    async def stream():
        for update in updates:
            yield update

    chunks = [chunk async for chunk in rendered(stream(), answer.renderer())]
    text = b"".join(chunks).decode()
    assert "Hel" in text and "lo" in text
    assert answer.streaming_response(iter(chunks)).media_type.startswith(
        "text/plain" if make is generated else "text/event-stream")
