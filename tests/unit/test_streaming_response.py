"""The stream every protocol answers in (frontend/http.py's ImmediateStreamingResponse), on a fake ASGI
server: a `receive` that waits for the client's disconnect and a `send` that records what goes out, with
uvicorn's ASGI spec version (2.3: Starlette listens for the disconnect in a task group of its own)."""
import asyncio

from frontend.http import ImmediateStreamingResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST"}


class FakeServer:
    def __init__(self):
        self.sent: list[dict] = []
        self.client_left = asyncio.Event()

    async def receive(self) -> dict:
        await self.client_left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [message["body"] for message in self.sent if message["type"] == "http.response.body"]


def test_the_status_line_and_first_chunk_go_out_in_the_turn_the_response_starts():
    async def scenario():
        server, more = FakeServer(), asyncio.Event()

        async def chunks():
            yield b"data: first\n\n"  # in hand when the route returns its stream
            await more.wait()
            yield "data: second\n\n"

        answering = asyncio.create_task(ImmediateStreamingResponse(chunks())(SCOPE, server.receive, server.send))
        await asyncio.sleep(0)  # one turn of the event loop
        first_turn = [message["type"] for message in server.sent]
        more.set()
        await asyncio.wait_for(answering, 5)
        return first_turn, server

    first_turn, server = asyncio.run(scenario())
    assert first_turn == ["http.response.start", "http.response.body"]
    assert server.sent[0]["status"] == 200
    assert server.bodies() == [b"data: first\n\n", b"data: second\n\n", b""]
    assert server.sent[-1]["more_body"] is False


def test_a_client_that_leaves_after_the_first_chunk_ends_the_stream_and_its_generator():
    async def scenario():
        server, closed = FakeServer(), asyncio.Event()

        async def chunks():
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()  # the engine's next token, which never comes
            finally:
                closed.set()

        answering = asyncio.create_task(ImmediateStreamingResponse(chunks())(SCOPE, server.receive, server.send))
        await asyncio.sleep(0)
        server.client_left.set()
        await asyncio.wait_for(answering, 5)
        return server, closed.is_set()

    server, closed = asyncio.run(scenario())
    assert server.bodies() == [b"data: first\n\n"]
    assert closed


def test_an_empty_stream_still_ends_its_body():
    async def scenario():
        server = FakeServer()

        async def chunks():
            return
            yield  # an async generator that yields nothing

        await asyncio.wait_for(ImmediateStreamingResponse(chunks())(SCOPE, server.receive, server.send), 5)
        return server

    server = asyncio.run(scenario())
    assert [message["type"] for message in server.sent] == ["http.response.start", "http.response.body"]
    assert server.bodies() == [b""]
