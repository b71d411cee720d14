"""A fake engine worker: an engine's real ZeroMQ sockets with no vLLM behind them.

FakeEngine binds an engine's PULL and PUB, answers HELLO with WELCOME and publishes what a test tells
it to, so the engine client's tests can drive a link message by message."""
import asyncio

import zmq
import zmq.asyncio

from common.config import ServerConfig
from common.messages import (
    BROADCAST_TOPIC, Abort, Add, Delta, EngineLoad, Heartbeat, Hello, LoadReport, Resync, StepOutput, Welcome, encode,
    request_decoder, topic_for,
)

FRONTEND = "fe-test-0"


class FakeEngine:
    """A stand-in for one engine worker: its PULL and PUB, a WELCOME for each HELLO, heartbeats on demand."""

    model, tokenizer, max_model_len = "m", "tok", 128

    def __init__(self, server: ServerConfig, rank: int, engine_id: str, context: zmq.asyncio.Context | None = None):
        context = context or zmq.asyncio.Context.instance()
        self.engine_id = engine_id
        self.pull = context.socket(zmq.PULL)
        self.pull.bind(server.local_request_address(rank))
        self.pub = context.socket(zmq.PUB)
        self.pub.bind(server.local_output_address(rank))
        self.frontend_id = FRONTEND  # the last one that said HELLO
        self.added: list[Add] = []
        self.aborted: list[str] = []
        self.resyncs: list[Resync] = []
        self.seq = 0
        self.load_seq = 0
        self.running = asyncio.create_task(self.serve())

    async def serve(self):
        while True:
            await self.handle(request_decoder.decode(await self.pull.recv()))

    async def handle(self, message) -> None:
        if isinstance(message, Hello):
            self.seq = 0
            self.frontend_id = message.frontend_id
            await self.publish(topic_for(message.frontend_id), self.welcome(message.frontend_id))
        elif isinstance(message, Add):
            self.added.append(message)
        elif isinstance(message, Abort):
            self.aborted.extend(message.request_ids)
        elif isinstance(message, Resync):
            self.resyncs.append(message)

    def welcome(self, frontend_id: str) -> Welcome:
        return Welcome(self.engine_id, frontend_id, self.model, self.tokenizer, self.max_model_len)

    async def publish(self, topic: bytes, message) -> None:
        await self.pub.send_multipart([topic, encode(message)])

    async def heartbeat(self, load: EngineLoad | None = None, last_seq: int | None = None, cache_seq: int = 0) -> None:
        last_seqs = {self.frontend_id: self.seq if last_seq is None else last_seq}
        await self.publish(BROADCAST_TOPIC, Heartbeat(self.engine_id, load or EngineLoad(), last_seqs,
                                                      cache_seq=cache_seq))

    async def report(self, taken: dict[str, int], waiting: int = 0, running: int = 0, prefill_tokens: int = 0) -> None:
        """A LoadReport: the engine took `taken` ADDs from each frontend."""
        self.load_seq += 1
        report = LoadReport(self.engine_id, self.load_seq, waiting, running, prefill_tokens, 0, 0, taken)
        await self.publish(BROADCAST_TOPIC, report)

    async def step(self, *deltas: Delta) -> None:
        self.seq += 1
        await self.publish(topic_for(self.frontend_id), StepOutput(self.engine_id, self.seq, list(deltas)))

    def close(self):
        self.running.cancel()
        self.pull.close()
        self.pub.close()
