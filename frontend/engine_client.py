"""The frontend's side of the wire: one EngineLink per engine worker, and the EngineClient (the fleet)
that routes each request to one of them.

Each link has its own PUSH to its engine and its own SUB for its outputs, read by a callback of the
event loop that hands each Delta to its request's queue; request handlers only ever see those queues. The
three PUB/SUB traps, answered per link:
- slow joiner: HELLO is repeated until the engine's WELCOME arrives on our topic;
- high-water mark: StepOutputs are numbered per frontend, and a gap (seen in the numbers, or in a
  heartbeat naming a later number than the last one here) fails that link's in-flight requests and
  starts a new handshake;
- restarted engine: a WELCOME, heartbeat or step from another engine id, its connection closing (a
  ZeroMQ monitor on the SUB socket sees the process end), or heartbeat silence past the timeout, loses
  that link's in-flight requests at once and marks the engine down until a new WELCOME.
Each link also keeps the engine's load (its LoadReports and this frontend's sends not yet acknowledged,
frontend/load_view.py) and, under exact placement, its reported prefix cache (frontend/cache_record.py,
asking for a snapshot when a CachedBlocks was lost), and watches its progress: an engine whose
heartbeats say its steps have not advanced for stall_timeout_s, or that went silent while its
connection stays open (a stopped process, a hung host), is stalled.
A request its engine lost, or that a stalled or departing (Goodbye) engine holds, goes on on another
engine (frontend/migration.py), or fails there alone; new requests go to the other engines.
"""
import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.config import EngineLinkConfig, ServerConfig
from common.messages import (
    BROADCAST_TOPIC, Abort, Add, CachedBlocks, Delta, EngineLoad, Goodbye, Heartbeat, Hello, ListLoras, LoadLora,
    LoadReport, Loras, ResetPrefixCache, Resync, SetOffline, StepOutput, UnloadLora, Welcome, encode, frontend_slot,
    output_decoder, topic_for,
)
from common.sockets import make_socket
from common.tracing import log_fields
from frontend.cache_record import CacheRecord
from frontend.load_view import LoadView
from frontend.media import PromptImages
from frontend.metrics import CACHE_RESYNCS, LOAD_REPORTS_LOST, MIGRATIONS, NOT_MOVED, ROUTED, STALLS
from frontend.migration import Flight
from frontend.router import Route, Router, RoutingScope, current_scope
from frontend.tenants import current_tenant

log = logging.getLogger(__name__)

READ_BATCH = 256  # output messages handled before the reader gives the event loop back
LOOP_HELD_WARNING_S = 1.0  # the watch ran this much later than due: say so, it explains timeouts
CATCH_UP_BATCHES = 16  # of READ_BATCH, read before an engine is declared silent


class EngineUnavailable(Exception):
    """The engine cannot take the request now (down, restarting, or not yet welcomed us)."""


class EngineLost(Exception):
    """The engine went away, or outputs were lost, while the request was running."""


class ShuttingDown(EngineLost):
    """This frontend is stopping and its drain time is over: the request is ended, not finished."""


class Overloaded(Exception):
    """This frontend already runs as many generations as it may."""


class RequestTimeout(Exception):
    """The request ran past the configured request timeout."""


class RequestQueue(asyncio.Queue):
    """Where one request's Deltas arrive, with the time by which it must be done, and the token ids
    that arrived on it (from every engine it ran on): what a move to another engine goes on from."""

    def __init__(self, timeout_s: float, request_id: str = ""):
        super().__init__()
        self.request_id = request_id
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.generated: list[int] = []
        self.finished = False  # its last Delta is in

    def put_nowait(self, item) -> None:
        if isinstance(item, Delta):
            self.generated += item.token_ids
            self.finished = item.finish_reason is not None
        super().put_nowait(item)


def fail_each(link: "EngineLink", streams: dict[str, RequestQueue], error: "EngineLost", cause: str) -> None:
    """What a link does with the requests it lost when nothing moves them: end each with the error."""
    for queue in streams.values():
        queue.put_nowait(error)


class EngineLink:
    """One engine worker as this frontend sees it: its sockets, handshake, gap check and heartbeat
    watch, and the requests this frontend sent it."""

    def __init__(self, rank: int, request_address: str, output_address: str, config: EngineLinkConfig,
                 frontend_id: str, on_lost: Callable[[int], None] = lambda rank: None,
                 max_reported_blocks: int = 1 << 20, pool: str = "", stall_timeout_s: float = 10.0,
                 relocate=fail_each):
        self.rank = rank
        # The served name of its pool's model ("": whatever the engine serves): an engine that welcomes
        # us for another model (a remote engine given the wrong `model`) is never used.
        self.pool = pool
        self.wrong_model: str | None = None
        self.frontend_id = frontend_id
        self.config = config
        self.on_lost = on_lost  # the engine went, or emptied its cache: what the fleet knew of it is void
        # What happens to requests this link lost or gives up (the fleet's client moves them elsewhere).
        self.relocate: Callable[[EngineLink, dict[str, RequestQueue], EngineLost, str], None] = relocate
        self.stall_timeout_s = stall_timeout_s
        self.push = make_socket(zmq.Context.instance(), zmq.PUSH, request_address, bind=False, link=config)
        # A plain socket read from the event loop's reader callback: pyzmq's asyncio socket costs about
        # three times its CPU for each message (measured on the CPU host), and at concurrency 1 every
        # token is a message.
        self.sub = make_socket(zmq.Context.instance(), zmq.SUB, output_address, bind=False, link=config)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(frontend_id))
        self.sub.setsockopt(zmq.SUBSCRIBE, BROADCAST_TOPIC)
        # The SUB's connection to the engine: it closes when the engine's process ends, not when it stops.
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.connected = False
        self.silent = False  # lost to heartbeat silence, and not heard from since
        self.since_progress_s = 0.0  # from the last heartbeat: how long its steps have not advanced
        self.offline = False  # an operator took it out of routing (its heartbeats say so)
        self.was_stalled = False
        self.streams: dict[str, RequestQueue] = {}
        self.engine_id: str | None = None
        self.seq = 0
        self.last_heartbeat = 0.0
        self.load = EngineLoad()  # from the last heartbeat: for /health and /metrics
        self.load_view = LoadView()  # for routing
        self.cache_record = CacheRecord(rank, max_reported_blocks)  # what the engine reports its prefix cache holds
        self.draining = False  # the engine said GOODBYE: it takes no new request
        self.welcome: Welcome | None = None
        self.loras: dict[str, str] = {}  # the LoRA adapters the engine serves, name -> path
        self.loras_version = 0  # the engine's version of that list
        # Requests to abort that the request socket did not take (at its high-water mark): sent
        # again by the watch until they go, so the engine never runs on for a request given up here.
        self.unsent_aborts: set[str] = set()
        self.tasks: list[asyncio.Task] = []
        self.handlers = {
            Welcome: self.on_welcome, StepOutput: self.on_step, Heartbeat: self.on_heartbeat, Goodbye: self.on_goodbye,
            CachedBlocks: self.on_cached_blocks, LoadReport: self.on_load_report, Loras: self.on_loras,
        }

    @property
    def ready(self) -> bool:
        return self.engine_id is not None

    @property
    def up(self) -> bool:
        """Welcomed, heard from within the heartbeat timeout, and not shutting down."""
        return self.heartbeat_fresh() and not self.draining

    @property
    def stalled(self) -> bool:
        """Its steps have not advanced for stall_timeout_s, or it went silent while its connection stays
        open (its process is stopped, or its host hangs): alive, it may still come back."""
        progress_stopped = self.heartbeat_fresh() and self.since_progress_s > self.stall_timeout_s
        return progress_stopped or (self.silent and self.connected)

    @property
    def routable(self) -> bool:
        """New requests may go here: up, making progress, and not taken out of routing."""
        return self.up and not self.stalled and not self.offline

    @property
    def resumes_grammars(self) -> bool:
        return self.welcome is not None and self.welcome.resumes_grammars

    def heartbeat_fresh(self) -> bool:
        return self.ready and time.monotonic() - self.last_heartbeat <= self.config.heartbeat_timeout_s

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sub.getsockopt(zmq.FD), self.read_outputs)
        loop.add_reader(self.monitor.getsockopt(zmq.FD), self.read_connection_events)
        loop.call_soon(self.read_outputs)  # what arrived before the readers were added
        loop.call_soon(self.read_connection_events)
        self.tasks = [asyncio.create_task(self.watch_engine())]

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sub.getsockopt(zmq.FD))
        loop.remove_reader(self.monitor.getsockopt(zmq.FD))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sub.disable_monitor()
        self.monitor.close()
        self.push.close()
        self.sub.close()

    def add(self, request_id: str, frame: bytes, queue: RequestQueue) -> None:
        """Send an encoded message the engine answers with Deltas for `request_id` (an ADD, a
        LoadLora, …) on `queue`; only once it is out is the request registered. An engine taken out of
        routing still takes what is sent to it by name (a pinned request, an operator's message)."""
        if not self.up or self.stalled:
            raise EngineUnavailable(f"engine {self.rank} is not available")
        if not self.send_frame(frame):
            raise EngineUnavailable(f"engine {self.rank} is not connected")
        self.streams[request_id] = queue
        self.send_aborts()  # the socket took a message: it may take those it refused before

    def serves(self, lora: str | None) -> bool:
        return lora is None or lora in self.loras

    def release(self, request_id: str, abort: bool) -> None:
        if self.streams.pop(request_id, None) is not None and abort:
            self.abort([request_id])

    def abort(self, request_ids: list[str]) -> None:
        """Tell the engine to drop these requests, now or, if the socket is full, at a later watch step."""
        self.unsent_aborts.update(request_ids)
        self.send_aborts()

    def send_aborts(self) -> None:
        if self.unsent_aborts and self.send(Abort(list(self.unsent_aborts))):
            self.unsent_aborts.clear()

    def send(self, message) -> bool:
        return self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> bool:
        try:
            self.push.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def read_outputs(self) -> None:
        """Hand on what waits on the SUB socket, when the event loop sees its descriptor readable.
        ZeroMQ signals that descriptor on edges, so this reads until nothing is left, and after
        READ_BATCH messages yields the loop to the rest and comes back at once."""
        if self.read_batch():
            asyncio.get_running_loop().call_soon(self.read_outputs)

    def read_batch(self) -> bool:
        """Handle up to READ_BATCH waiting output messages; whether more may wait."""
        for _ in range(READ_BATCH):
            try:
                if not self.sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return False
                frame = self.sub.recv_multipart(zmq.NOBLOCK)[-1]
            except zmq.Again:
                return False
            except zmq.ZMQError as error:  # the socket is closed: the link is stopping
                log.info("engine %d: stopped reading outputs (%s)", self.rank, error)
                return False
            try:
                message = output_decoder.decode(frame)
                self.handlers[type(message)](message)
            except Exception:  # one bad message must not leave the link deaf
                log.exception("engine %d: dropped an output message that could not be handled", self.rank)
        return True

    def read_connection_events(self) -> None:
        """The SUB socket's connection to the engine opened or closed (edge-triggered, as outputs)."""
        while True:
            try:
                if not self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except (zmq.Again, zmq.ZMQError):  # nothing left, or the link is stopping
                return
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = self.silent = False
                if self.ready:
                    self.engine_lost("the engine's connection closed", "crash")

    async def watch_engine(self) -> None:
        due = time.monotonic()
        while True:
            held = time.monotonic() - due
            if held > LOOP_HELD_WARNING_S:
                log.warning("engine %d: this frontend's event loop was held %.1f s past its watch", self.rank, held)
            if held > 0:  # silence is counted in time this frontend ran: a stalled host stalls the engine too
                self.last_heartbeat = min(time.monotonic(), self.last_heartbeat + held)
            try:
                self.send_aborts()  # first: what frees room in the socket goes to them
                if not self.ready:
                    self.send(Hello(self.frontend_id))
                elif self.heartbeat_overdue():
                    self.silent = True
                    self.engine_lost("no heartbeat from the engine", "heartbeat")
                self.watch_progress()
                self.expire_overdue()
            except Exception:
                log.exception("engine %d: watch step failed", self.rank)
            due = time.monotonic() + self.config.hello_interval_s
            await asyncio.sleep(self.config.hello_interval_s)

    def heartbeat_overdue(self) -> bool:
        """No heartbeat within the timeout, counting what waits unread. After this process itself was
        held (a loaded host, the event loop busy), the event loop runs this timer before it reads the
        socket: the heartbeats that arrived meanwhile must not pass for the engine's silence."""
        if time.monotonic() - self.last_heartbeat <= self.config.heartbeat_timeout_s:
            return False
        for _ in range(CATCH_UP_BATCHES):
            if not self.read_batch():
                break
        return time.monotonic() - self.last_heartbeat > self.config.heartbeat_timeout_s

    def watch_progress(self) -> None:
        """A stalled engine gets no new requests (`routable`), and its requests go elsewhere: aborted
        here, since it may wake and go on with them."""
        stalled = self.stalled
        if stalled != self.was_stalled:
            self.was_stalled = stalled
            if stalled:
                STALLS.labels(self.model, str(self.rank)).inc()
                log.warning("engine %d (%s) stalled: %s", self.rank, self.engine_id,
                            "silent with its connection open" if self.silent else
                            f"no step finished for {self.since_progress_s:.0f} s")
            else:
                log.info("engine %d (%s) makes progress again", self.rank, self.engine_id)
        if stalled and self.streams:
            streams, self.streams = self.streams, {}
            self.abort(list(streams))
            self.relocate(self, streams, EngineLost(f"engine {self.rank} stalled"), "stall")

    def expire_overdue(self) -> None:
        now = time.monotonic()
        overdue = [request_id for request_id, queue in self.streams.items() if queue.deadline < now]
        for request_id in overdue:
            queue = self.streams.pop(request_id)
            queue.put_nowait(RequestTimeout(f"the request ran past its {queue.timeout_s:g} s request timeout"))
        if overdue:
            self.abort(overdue)

    def on_welcome(self, message: Welcome) -> None:
        if message.frontend_id != self.frontend_id:
            return
        if self.pool and message.model != self.pool:
            if self.wrong_model != message.model:
                log.error("engine %d of %s serves %r, not %r: it is not used (server.yml's engines give each "
                          "remote engine the `model` it serves)", self.rank, self.pool, message.model, self.pool)
                self.wrong_model = message.model
            return
        if self.engine_id not in (None, message.engine_id):
            self.engine_lost("the engine restarted", "crash")
        if self.engine_id is None:
            log.info("engine %d: welcomed by %s (%s, context %d)", self.rank, message.engine_id, message.model,
                     message.max_model_len)
        self.engine_id, self.welcome = message.engine_id, message
        self.loras, self.loras_version = message.loras, message.loras_version
        self.seq = 0
        self.load_view.welcomed()
        self.draining = self.silent = False
        self.since_progress_s = 0.0
        self.last_heartbeat = time.monotonic()

    def on_step(self, message: StepOutput) -> None:
        if message.engine_id != self.engine_id:
            return  # from an engine we already gave up on
        if message.seq != self.seq + 1:
            self.engine_lost(f"outputs lost (expected message {self.seq + 1}, got {message.seq})", "outputs_lost")
            return
        self.seq = message.seq
        for delta in message.deltas:
            if delta.finish_reason == "abort" and delta.request_id in self.streams:
                # The engine dropped it (its Goodbye, which moves requests first, did not get here).
                lost = {delta.request_id: self.streams.pop(delta.request_id)}
                self.relocate(self, lost, EngineLost(delta.error or "the engine aborted the request"),
                              "drain" if self.draining else "crash")
                continue
            queue = self.streams.get(delta.request_id)
            if queue is not None:
                queue.put_nowait(delta)

    def on_heartbeat(self, message: Heartbeat) -> None:
        self.load = message.load
        self.silent = False
        if self.engine_id not in (None, message.engine_id):
            self.engine_lost("the engine restarted", "crash")
        elif self.engine_id is not None:
            self.last_heartbeat = time.monotonic()
            self.since_progress_s, self.offline = message.since_progress_s, message.offline
            if message.loras_version != self.loras_version:  # the list of a change did not reach us
                self.send(ListLoras(self.frontend_id))
            if message.last_seqs.get(self.frontend_id, 0) > self.seq:
                self.engine_lost(f"outputs lost (the engine sent up to message {message.last_seqs[self.frontend_id]}, "
                                 f"the last one here was {self.seq})", "outputs_lost")
            elif self.cache_record.behind(message.cache_seq):
                self.resync()

    def on_load_report(self, message: LoadReport) -> None:
        if message.engine_id != self.engine_id:
            return
        lost = self.load_view.on_report(message, self.frontend_id)
        if lost:
            LOAD_REPORTS_LOST.labels(self.model, str(self.rank)).inc(lost)
        if self.cache_record.behind(message.cache_seq):
            self.resync()

    def on_loras(self, message: Loras) -> None:
        if message.engine_id == self.engine_id:
            self.loras, self.loras_version = message.loras, message.version

    def on_cached_blocks(self, message: CachedBlocks) -> None:
        if message.engine_id != self.engine_id:
            return
        if not self.cache_record.apply(message):
            self.resync()
        elif message.emptied:  # an operator emptied its prefix cache: what was sent there is gone too
            self.on_lost(self.rank)

    def resync(self) -> None:
        """A CachedBlocks was lost: ask the engine for its whole prefix cache."""
        if self.cache_record.ask_resync():
            log.info("engine %d: a prefix-cache report was lost; asking for a snapshot", self.rank)
            CACHE_RESYNCS.labels(self.model, str(self.rank)).inc()
            self.send(Resync(self.frontend_id))

    def on_goodbye(self, message: Goodbye) -> None:
        # No new request goes there; what runs there goes elsewhere before the engine aborts it.
        if message.engine_id == self.engine_id and not self.draining:
            reason = "failed" if message.failed else "is shutting down"
            log.info("engine %d (%s) %s: moving its %d requests; no new requests go to it", self.rank,
                     self.engine_id, reason, len(self.streams))
            self.draining = True
            streams, self.streams = self.streams, {}
            self.relocate(self, streams, EngineLost(f"the engine {reason}"), "crash" if message.failed else "drain")

    def engine_lost(self, reason: str, cause: str) -> None:
        log.warning("engine %d (%s) lost: %s; %d requests to move or fail", self.rank, self.engine_id, reason,
                    len(self.streams))
        self.engine_id = None
        self.draining = False
        self.load_view.clear()
        self.cache_record.clear()
        # A lost engine holds nothing of ours: a new one never had them, the same one drops them at our HELLO.
        self.unsent_aborts.clear()
        streams, self.streams = self.streams, {}
        self.on_lost(self.rank)
        self.relocate(self, streams, EngineLost(reason), cause)

    def fail_all(self, error: type[Exception], reason: str) -> None:
        """End every request sent here with `error(reason)`, and drop them in the engine too."""
        streams, self.streams = self.streams, {}
        for queue in streams.values():
            queue.put_nowait(error(reason))
        if streams:
            self.abort(list(streams))

    @property
    def model(self) -> str:
        """The served name of its model, as its last Welcome gave it: the `model` label of its metrics."""
        return self.welcome.model if self.welcome is not None else ""

    def view(self) -> dict:
        """What /health and the dashboard show of this engine."""
        report = self.load_view.report
        return {"rank": self.rank, "model": self.model, "up": self.up, "engine_id": self.engine_id,
                "draining": self.draining, "stalled": self.stalled, "offline": self.offline,
                "running": self.load.running, "waiting": self.load.waiting,
                "kv_cache_usage": self.load.kv_cache_usage, "in_flight": len(self.streams),
                "queued_prefill_tokens": report.prefill_tokens, "free_kv_blocks": report.free_blocks,
                "held": report.held,
                "unacknowledged": len(self.load_view.unacknowledged)}


# What a client's error adds when its request could not go on on another engine.
NOT_MOVED_BECAUSE = {
    "pinned": "the request is pinned to that engine (X-data-parallel-rank), so it did not move",
    "limit": "the request had already moved to another engine as often as migration_limit allows",
    "grammar": "no engine that is up can resume the request's structured-output grammar",
    "no_engine": "no other engine is available to go on with it",
}


class EngineClient:
    """The fleet of one model (a pool): a link per engine (this host's data_parallel_size first, then
    server.yml's `engines` of that model), a router choosing one for each request, and the requests in
    flight on each, which it moves to another engine of the pool when theirs is lost (frontend/migration.py)."""

    def __init__(self, server: ServerConfig, frontend_id: str, addresses: list[tuple[str, str]],
                 programs: list[str] = (), name: str = ""):
        self.frontend_id = frontend_id
        self.name = name  # the served name from the configuration; "": what the engines' Welcome says
        self.max_in_flight = server.max_in_flight
        self.request_timeout_s = server.request_timeout_s
        self.migration_limit = server.migration_limit
        # The priority classes whose requests engines may hold back (priority.classes[].max_share below 1).
        self.bounded = {place for place, c in enumerate(server.priority.classes) if c.max_share < 1}
        self.classes = [c.name for c in server.priority.classes]  # each priority's name, for its metrics
        self.programs = list(programs)  # the supervisord program of each engine on this host, by rank
        self.router = Router(server.router, len(addresses), frontend_index(frontend_id), max(server.frontends, 1))
        self.links = [EngineLink(rank, request, output, server.engine, frontend_id, self.router.forget,
                                 server.router.max_reported_blocks, name, server.stall_timeout_s, self.relocate)
                      for rank, (request, output) in enumerate(addresses)]
        self.requests: dict[str, Flight] = {}
        self.closed: str | None = None  # why no request is taken any more (the frontend is stopping)

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links))

    def add(self, request_id: str, prompt_token_ids: list[int], sampling: dict,
            pooling: dict | None = None, images: PromptImages | None = None, trace=None) -> RequestQueue:
        """Send the request to the engine the router picks, among those serving the LoRA adapter the
        HTTP request's `model` names; its Deltas (or an EngineLost) arrive on the queue returned, from
        whichever engine it goes on on if its engine is lost (frontend/migration.py). Every generation
        of one HTTP request goes to the same engine. `pooling`: a pooling request (PoolingParams'
        keyword arguments), whose one Delta carries its pooled vector. `trace`: the generation's
        GenerationTrace (frontend/tracing.py), when it is traced."""
        scope = current_scope()
        lora = scope.lora if scope is not None else None
        if self.closed is not None:
            raise EngineUnavailable(self.closed)
        if len(self.requests) >= self.max_in_flight:
            raise Overloaded(f"this server is at its limit of {self.max_in_flight} requests in flight")
        tenant = current_tenant()
        if tenant.max_tokens and sampling.get("max_tokens", 0) > tenant.max_tokens:
            sampling = {**sampling, "max_tokens": tenant.max_tokens}
        add = Add(request_id, self.frontend_id, prompt_token_ids, sampling, lora, pooling=pooling,
                  images=images.data if images is not None else [],
                  trace=trace.wire if trace is not None else None, tenant=tenant.name, priority=tenant.priority)
        frame = encode(add)
        flight = Flight(add, RequestQueue(tenant.request_timeout_s or self.request_timeout_s, request_id),
                        pinned=scope is not None and scope.pinned is not None,
                        image_keys=images.keys if images is not None else None, trace=trace)
        self.send(flight, add, frame, self.refusing(lora), scope)
        self.requests[request_id] = flight
        return flight.queue

    def send(self, flight: Flight, add: Add, frame: bytes, refused: set[int], scope: RoutingScope | None) -> None:
        """Send an encoded ADD of the flight to the engine the router picks, but none of `refused`."""
        while True:
            route = self.pick(add.prompt_token_ids, refused, scope, flight.image_keys, add.priority in self.bounded)
            link = self.links[route.rank]
            try:
                link.add(add.request_id, frame, flight.queue)
                break
            except EngineUnavailable:
                # Its connection is gone (the engine just died): another engine can take it, unless pinned.
                if route.reason == "pinned":
                    raise
                refused.add(link.rank)
        flight.link = link
        if flight.trace is not None:
            flight.trace.routed(link.rank, link.engine_id, route.reason)
        # In its load until acknowledged.
        link.load_view.sent_request(route.prefill_tokens, len(add.prompt_token_ids), route.blocks)
        ROUTED.labels(link.model, str(link.rank), route.reason).inc()

    def refusing(self, lora: str | None, grammar: bool = False) -> set[int]:
        """The engines that cannot take a request: without its LoRA adapter (its requests go only where
        it is loaded), or, for one whose grammar must resume, without a way to resume it."""
        return {link.rank for link in self.links
                if not link.serves(lora) or (grammar and not link.resumes_grammars)}

    def relocate(self, link: EngineLink, streams: dict[str, RequestQueue], error: EngineLost, cause: str) -> None:
        """Requests `link` lost or gave up: each goes on on another engine, or ends with `error`."""
        for queue in streams.values():
            flight = self.requests.get(queue.request_id)
            if flight is not None and flight.queue is queue:
                self.move(flight, error, cause)
            elif not queue.finished:  # an operator's message to that engine (LoRA loading, offline)
                queue.put_nowait(error)

    def move(self, flight: Flight, error: EngineLost, cause: str) -> None:
        """Go on on another engine from the tokens generated so far, if the flight may move."""
        if flight.queue.finished:
            return  # its end is in its queue already
        if flight.remaining() <= 0:  # only its end was lost
            flight.queue.put_nowait(Delta(flight.engine_request_id, [], "length"))
            return
        refusal = flight.refusal(self.migration_limit)
        if refusal is None:
            flight.moves += 1
            add = flight.continuation()
            refused = self.refusing(add.lora, flight.grammar_bound) | {flight.link.rank}
            try:
                self.send(flight, add, encode(add), refused, None)
            except EngineUnavailable:
                anywhere = not flight.grammar_bound or any(link.resumes_grammars and link.routable
                                                           for link in self.links)
                refusal = "no_engine" if anywhere else "grammar"
        if refusal is not None:
            NOT_MOVED.labels(refusal).inc()
            flight.queue.put_nowait(EngineLost(f"{error}; {NOT_MOVED_BECAUSE[refusal]}"))
            return
        MIGRATIONS.labels(cause).inc()
        if flight.trace is not None:
            flight.trace.moved(flight.link.rank, cause, len(flight.generated))
        log.info("request %s moved to engine %d after %d tokens (%s: %s)", flight.add.request_id, flight.link.rank,
                 len(flight.generated), cause, error, extra=log_fields(flight.add))

    def shut_down(self, reason: str) -> None:
        """Take no more requests, and end the running ones with ShuttingDown: a 503, or after the
        first byte the error event of the request's protocol."""
        self.closed = reason
        for link in self.links:
            link.fail_all(ShuttingDown, reason)

    def pick(self, prompt_token_ids: list[int], refused: set[int], scope: RoutingScope | None,
             image_keys: dict[int, int] | None = None, bounded: bool = False) -> Route:
        if scope is not None and scope.pinned is not None:
            # A pinned engine without the adapter refuses the request itself, with its reason.
            return Route(scope.pinned, "pinned", len(prompt_token_ids))
        if (scope is not None and scope.rank is not None and scope.rank not in refused
                and self.links[scope.rank].routable):
            return Route(scope.rank, scope.reason, len(prompt_token_ids))
        engines = {link.rank: link for link in self.links if link.routable and link.rank not in refused}
        if not engines:
            raise EngineUnavailable("no engine is available")
        route = self.router.pick(prompt_token_ids, engines, image_keys, bounded)
        if scope is not None:
            scope.rank, scope.reason = route.rank, route.reason
        return route

    def release(self, request_id: str, abort: bool) -> None:
        """Forget the request; tell its engine to drop it too when it has not finished there."""
        flight = self.requests.pop(request_id, None)
        if flight is not None:
            flight.link.release(flight.engine_request_id, abort)

    def lora_targets(self, name: str, path: str | None) -> list[EngineLink]:
        """The engines up that loading (with a path) or unloading (without) the adapter `name` changes:
        for a load, those without it (an engine restarted since the last load has lost it)."""
        return [link for link in self.up_links() if (name in link.loras) == (path is None)]

    async def update_loras(self, name: str, path: str | None) -> dict[int, str | None]:
        """Load (with a path) or unload (without) the LoRA adapter `name` on the engines it changes,
        at once; returns each one's answer by rank: None when it did it, else why not."""
        async def on(link: EngineLink) -> str | None:
            request_id = uuid.uuid4().hex
            message = (LoadLora(request_id, self.frontend_id, name, path) if path is not None
                       else UnloadLora(request_id, self.frontend_id, name))
            refusal = await self.ask(link, message)
            if refusal is not None:
                return refusal
            # The engine's Loras went out before this answer; this keeps the list right here even if
            # that message was lost (the next heartbeat's version has the whole list asked for).
            if path is not None:
                link.loras = {**link.loras, name: path}
            else:
                link.loras = {key: value for key, value in link.loras.items() if key != name}
            return None

        links = self.lora_targets(name, path)
        answers = await asyncio.gather(*(on(link) for link in links))
        return {link.rank: answer for link, answer in zip(links, answers)}

    async def set_offline(self, rank: int, offline: bool) -> str | None:
        """Take engine `rank` out of every frontend's routing, or put it back (its heartbeats tell the
        other frontends); None once it has, else why not."""
        link = self.links[rank]
        refusal = await self.ask(link, SetOffline(uuid.uuid4().hex, self.frontend_id, offline))
        if refusal is None:
            link.offline = offline
        return refusal

    async def reset_prefix_cache(self, rank: int) -> str | None:
        """Empty engine `rank`'s prefix cache (every frontend's record of it follows from its CachedBlocks);
        None once it has, else why not."""
        return await self.ask(self.links[rank], ResetPrefixCache(uuid.uuid4().hex, self.frontend_id))

    async def ask(self, link: EngineLink, message: LoadLora | UnloadLora | SetOffline | ResetPrefixCache) -> str | None:
        """Send an operator's message to one engine and wait for its answer: None when it did it, else
        why not."""
        queue = RequestQueue(self.request_timeout_s, message.request_id)
        try:
            link.add(message.request_id, encode(message), queue)
        except EngineUnavailable as error:
            return str(error)
        try:
            answer = await queue.get()
        finally:
            link.streams.pop(message.request_id, None)
        if isinstance(answer, Exception):  # the engine was lost, or the timeout passed
            return str(answer)
        if answer.finish_reason != "stop":
            return answer.error or "refused"
        return None

    @property
    def loras(self) -> dict[str, str]:
        """The LoRA adapters of the engines that are up (name -> path): the models besides the base."""
        return {name: path for link in self.up_links() for name, path in link.loras.items()}

    @property
    def runtime_lora_updating(self) -> bool:
        """An engine that is up takes LoRA adapters at run time."""
        return any(link.welcome.runtime_lora_updating for link in self.up_links())

    @property
    def size(self) -> int:
        return len(self.links)

    def up_links(self) -> list[EngineLink]:
        return [link for link in self.links if link.up]

    def heartbeat_fresh(self) -> bool:
        """At least one engine can take requests."""
        return any(link.up for link in self.links)

    def progressing(self) -> bool:
        """At least one engine takes new requests and makes progress (/health/ready)."""
        return any(link.routable for link in self.links)

    @property
    def welcome(self) -> Welcome | None:
        """The model as an engine that is up (else any that welcomed us) serves it."""
        for link in self.up_links() + self.links:
            if link.welcome is not None:
                return link.welcome
        return None

    @property
    def model(self) -> str:
        """The served name of this pool's model: the configured one, else the one its engines gave."""
        welcome = self.welcome
        return self.name or (welcome.model if welcome is not None else "")

    @property
    def engine_id(self) -> str | None:
        return next((link.engine_id for link in self.up_links()), None)

    @property
    def load(self) -> EngineLoad:
        """The fleet's load: requests added up over the engines that are up, KV cache use averaged."""
        return added_up([link.load for link in self.up_links()])

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def engines(self) -> list[dict]:
        """One entry per engine, by rank: for /health, and for the dashboard's per-engine view."""
        return [link.view() for link in self.links]


def added_up(loads: list[EngineLoad]) -> EngineLoad:
    """Engines' loads as one: requests and tokens added up, KV cache use averaged."""
    if not loads:
        return EngineLoad()
    return EngineLoad(running=sum(load.running for load in loads), waiting=sum(load.waiting for load in loads),
                      kv_cache_usage=sum(load.kv_cache_usage for load in loads) / len(loads),
                      prompt_tokens_total=sum(load.prompt_tokens_total for load in loads),
                      generation_tokens_total=sum(load.generation_tokens_total for load in loads),
                      preemptions_total=sum(load.preemptions_total for load in loads),
                      gpus=[gpu for load in loads for gpu in load.gpus])


def frontend_index(frontend_id: str) -> int:
    """This frontend's index on its host: its id is `<host>-<index>~<start>`."""
    index = frontend_slot(frontend_id).rpartition("-")[2]
    return int(index) if index.isdigit() else 0
