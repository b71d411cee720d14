"""The engine's sockets.

Requests: PULL socket, owned by its reader thread -> decode -> `deliver(time received, message)`
(admission, which fills the step loop's inbox).
Outputs: number per frontend -> PUB socket, under a lock, on the sender's thread; a heartbeat on
the broadcast topic every interval from a thread of its own, sent even while the step loop is inside
a long step (saying how long: the frontends' stall watch), and after each Welcome
(and on each Resync) the prefix cache's snapshot when the engine reports it
(engine_worker/cache_events.py). LoadReports are numbered here, and they and heartbeats carry the
number of the last CachedBlocks sent, so a frontend notices the loss of the last one too.
Each thread outlives a message it cannot handle (it logs it); a socket that fails for good ends
the process through `on_death`, so supervisord restarts it.
"""
import logging
import threading
import time

import msgspec
import zmq

from common.config import EngineLinkConfig
from common.messages import (
    BROADCAST_TOPIC, CachedBlocks, Heartbeat, LoadReport, StepOutput, Welcome, encode, request_decoder, topic_for,
)
from common.sockets import make_socket

log = logging.getLogger(__name__)


def start_request_reader(context, address: str, link: EngineLinkConfig, deliver, on_death):
    socket = make_socket(context, zmq.PULL, address, bind=True, link=link)

    def read_forever():
        while True:
            try:
                frame = socket.recv()
            except Exception as error:  # the context was terminated, or the socket is broken for good
                socket.close()
                on_death(f"the request socket failed: {error!r}")
                return
            read(frame)

    def read(frame: bytes) -> None:
        try:
            message = request_decoder.decode(frame)
        except msgspec.DecodeError as error:
            log.warning("dropped an undecodable request message: %s", error)
            return
        except Exception:
            log.exception("dropped a request message (%d bytes)", len(frame))
            return
        try:
            deliver(time.time(), message)
        except Exception:
            log.exception("dropped a %s", type(message).__name__)

    threading.Thread(target=read_forever, name="request-reader", daemon=True).start()


class OutputPublisher:
    """The PUB socket, shared under a lock: `send` publishes on the caller's thread (the step loop's
    outputs reach the socket without a hand-off to another thread, a fifth of a millisecond of each
    token's way out), and a heartbeat thread publishes between."""

    def __init__(self, context, address: str, link: EngineLinkConfig, engine_id: str, load, adapters=None, cache=None):
        self.adapters = adapters  # its `version` goes in each heartbeat
        self.cache = cache  # a CacheIndex: its snapshot follows each Welcome
        self.socket = make_socket(context, zmq.PUB, address, bind=True, link=link)
        self.engine_id = engine_id
        self.interval = link.heartbeat_interval_s
        self.load = load
        self.lock = threading.Lock()  # the socket and the numbering below
        self.seqs: dict[str, int] = {}
        self.load_seq = 0  # the number of the last LoadReport sent
        self.cache_seq = 0  # the number of the last CachedBlocks change sent
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat_forever, name="heartbeat", daemon=True)
        self.thread.start()

    def send(self, frontend_id: str | None, message) -> None:
        """Publish a message on one frontend's topic (None: the broadcast topic)."""
        with self.lock:
            self.publish_safely(frontend_id, message)

    def forget(self, frontend_id: str) -> None:
        """Drop a frontend's numbering; its next Welcome starts it again."""
        with self.lock:
            self.seqs.pop(frontend_id, None)

    def snapshot(self, frontend_id: str) -> None:
        """Send the prefix cache's snapshot to one frontend."""
        with self.lock:
            try:
                self.send_snapshot(frontend_id)
            except Exception:
                log.exception("could not send the prefix cache's snapshot to %s", frontend_id)

    def close(self, timeout: float = 2.0) -> None:
        self.stopped.set()
        self.thread.join(timeout)

    def beat_forever(self):
        while True:
            self.send_heartbeat()
            if self.stopped.wait(self.interval):
                return

    def send_heartbeat(self) -> None:
        try:
            version = self.adapters.version if self.adapters is not None else 0
            load = self.load.snapshot()  # NVML queries: outside the lock
            since_progress = self.load.since_progress()
            with self.lock:
                heartbeat = Heartbeat(self.engine_id, load, dict(self.seqs), version, self.cache_seq, since_progress,
                                      self.load.offline)
                self.publish(None, heartbeat)
        except Exception:
            log.exception("could not send a heartbeat")

    def publish_safely(self, frontend_id: str | None, message) -> None:
        try:
            self.publish(frontend_id, message)
        except Exception:
            log.exception("could not publish a %s to %s", type(message).__name__, frontend_id or "everyone")

    def publish(self, frontend_id: str | None, message) -> None:
        if isinstance(message, Welcome):
            self.seqs[frontend_id] = 0
        elif isinstance(message, StepOutput):
            self.seqs[frontend_id] = message.seq = self.seqs.get(frontend_id, 0) + 1
        elif isinstance(message, LoadReport):
            self.load_seq = message.seq = self.load_seq + 1
            message.cache_seq = self.cache_seq
        elif isinstance(message, CachedBlocks) and frontend_id is None:
            self.cache_seq = message.seq
        topic = BROADCAST_TOPIC if frontend_id is None else topic_for(frontend_id)
        self.socket.send_multipart([topic, encode(message)])
        if isinstance(message, Welcome):
            self.send_snapshot(frontend_id)

    def send_snapshot(self, frontend_id: str) -> None:
        if self.cache is not None:
            self.socket.send_multipart([topic_for(frontend_id), encode(self.cache.snapshot())])

