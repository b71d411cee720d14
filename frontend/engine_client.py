"""The frontend's side of the wire: one PUSH to the engine, one SUB for its outputs.

One task reads the SUB socket and hands each Delta to its request's queue; request handlers only
ever see those queues. The three PUB/SUB traps, answered here:
- slow joiner: HELLO is repeated until the engine's WELCOME arrives on our topic;
- high-water mark: StepOutputs are numbered per frontend, and a gap fails every in-flight request
  and starts a new handshake;
- restarted engine: a WELCOME, heartbeat or step from another engine id, or heartbeat silence past
  the timeout, fails every in-flight request at once and marks the engine down until a new WELCOME.
"""
import asyncio
import logging
import time

import zmq
import zmq.asyncio

from common.config import ServerConfig
from common.messages import (
    BROADCAST_TOPIC, Abort, Add, EngineLoad, Goodbye, Heartbeat, Hello, StepOutput, Welcome,
    encode, output_decoder, topic_for,
)
from common.sockets import make_socket

log = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """The engine cannot take the request now (down, restarting, or not yet welcomed us)."""


class EngineLost(Exception):
    """The engine went away, or outputs were lost, while the request was running."""


class Overloaded(Exception):
    """This frontend already runs as many generations as it may."""


class RequestTimeout(Exception):
    """The request ran past the configured request timeout."""


class RequestQueue(asyncio.Queue):
    """Where one request's Deltas arrive, with the time by which it must be done."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline


class EngineClient:
    def __init__(self, server: ServerConfig, frontend_id: str):
        self.frontend_id = frontend_id
        self.link = server.engine
        self.max_in_flight = server.max_in_flight
        self.request_timeout_s = server.request_timeout_s
        self.push = make_socket(zmq.Context.instance(), zmq.PUSH, server.request_address, bind=False, link=self.link)
        self.sub = make_socket(zmq.asyncio.Context.instance(), zmq.SUB, server.output_address, bind=False, link=self.link)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(frontend_id))
        self.sub.setsockopt(zmq.SUBSCRIBE, BROADCAST_TOPIC)
        self.streams: dict[str, RequestQueue] = {}
        self.engine_id: str | None = None
        self.seq = 0
        self.last_heartbeat = 0.0
        self.load = EngineLoad()
        self.welcome: Welcome | None = None
        self.tasks: list[asyncio.Task] = []
        self.handlers = {
            Welcome: self.on_welcome, StepOutput: self.on_step, Heartbeat: self.on_heartbeat, Goodbye: self.on_goodbye,
        }

    @property
    def ready(self) -> bool:
        return self.engine_id is not None

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.read_outputs()), asyncio.create_task(self.watch_engine())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.push.close()
        self.sub.close()

    def add(self, request_id: str, prompt_token_ids: list[int], sampling: dict) -> RequestQueue:
        """Send the request to the engine; its Deltas (or an EngineLost) arrive on the queue returned."""
        if not self.ready:
            raise EngineUnavailable("the engine is not available")
        if len(self.streams) >= self.max_in_flight:
            raise Overloaded(f"this server is at its limit of {self.max_in_flight} requests in flight")
        # Encoded first: a value the wire cannot carry raises here, before the request holds a slot.
        add = encode(Add(request_id, self.frontend_id, prompt_token_ids, sampling))
        queue = RequestQueue(time.monotonic() + self.request_timeout_s)
        self.streams[request_id] = queue
        if not self.send(add):
            del self.streams[request_id]
            raise EngineUnavailable("the engine is not connected")
        return queue

    def release(self, request_id: str, abort: bool) -> None:
        """Forget the request; tell the engine to drop it too when it has not finished there."""
        if self.streams.pop(request_id, None) is not None and abort:
            self.send(Abort([request_id]))

    def send(self, message) -> bool:
        try:
            self.push.send(message if isinstance(message, bytes) else encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    async def read_outputs(self) -> None:
        while True:
            _, frame = await self.sub.recv_multipart()
            message = output_decoder.decode(frame)
            self.handlers[type(message)](message)

    async def watch_engine(self) -> None:
        while True:
            if not self.ready:
                self.send(Hello(self.frontend_id))
            elif time.monotonic() - self.last_heartbeat > self.link.heartbeat_timeout_s:
                self.engine_lost("no heartbeat from the engine")
            self.expire_overdue()
            await asyncio.sleep(self.link.hello_interval_s)

    def expire_overdue(self) -> None:
        now = time.monotonic()
        overdue = [request_id for request_id, queue in self.streams.items() if queue.deadline < now]
        for request_id in overdue:
            self.streams.pop(request_id).put_nowait(
                RequestTimeout(f"the request ran past the {self.request_timeout_s:g} s request timeout")
            )
        if overdue:
            self.send(Abort(overdue))

    def on_welcome(self, message: Welcome) -> None:
        if message.frontend_id != self.frontend_id:
            return
        if self.engine_id not in (None, message.engine_id):
            self.engine_lost("the engine restarted")
        if self.engine_id is None:
            log.info("welcomed by engine %s (%s, context %d)", message.engine_id, message.model, message.max_model_len)
        self.engine_id, self.welcome = message.engine_id, message
        self.seq = 0
        self.last_heartbeat = time.monotonic()

    def on_step(self, message: StepOutput) -> None:
        if message.engine_id != self.engine_id:
            return  # from an engine we already gave up on
        if message.seq != self.seq + 1:
            self.engine_lost(f"outputs lost (expected message {self.seq + 1}, got {message.seq})")
            return
        self.seq = message.seq
        for delta in message.deltas:
            queue = self.streams.get(delta.request_id)
            if queue is not None:
                queue.put_nowait(delta)

    def on_heartbeat(self, message: Heartbeat) -> None:
        self.load = message.load
        if self.engine_id not in (None, message.engine_id):
            self.engine_lost("the engine restarted")
        elif self.engine_id is not None:
            self.last_heartbeat = time.monotonic()
            if message.last_seqs.get(self.frontend_id, 0) > self.seq:
                self.engine_lost(f"outputs lost (the engine sent up to message {message.last_seqs[self.frontend_id]}, "
                                 f"the last one here was {self.seq})")

    def heartbeat_fresh(self) -> bool:
        return self.ready and time.monotonic() - self.last_heartbeat <= self.link.heartbeat_timeout_s

    def on_goodbye(self, message: Goodbye) -> None:
        if message.engine_id == self.engine_id:
            self.engine_lost("the engine shut down")

    def engine_lost(self, reason: str) -> None:
        log.warning("engine %s lost: %s; failing %d requests", self.engine_id, reason, len(self.streams))
        self.engine_id = None
        streams, self.streams = self.streams, {}
        for queue in streams.values():
            queue.put_nowait(EngineLost(reason))

