"""An Abort the request socket refuses at its high-water mark is not lost: the link sends it again
until it goes, or drops it once the engine is declared gone. Over real ZeroMQ sockets: a PULL that
reads nothing until the test lets it."""
import asyncio
import time

import zmq

from common.config import EngineLinkConfig
from common.messages import Abort, request_decoder
from frontend.engine_client import EngineLink, RequestQueue


async def full_link(tmp_path) -> tuple[EngineLink, zmq.Socket]:
    """A link whose request socket is full: its PULL, bound here, has read nothing."""
    address = f"ipc://{tmp_path}/requests"
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind(address)
    config = EngineLinkConfig(send_hwm=1, receive_hwm=1, hello_interval_s=0.05)
    link = EngineLink(0, address, f"ipc://{tmp_path}/outputs", config, "fe-0")
    deadline = time.monotonic() + 5
    while not link.send_frame(b"connected?"):
        assert time.monotonic() < deadline, "the link never connected"
        await asyncio.sleep(0.01)
    while True:
        while link.send_frame(b"x" * 1_000_000):
            pass
        # ZeroMQ's I/O thread may still take the last frame on towards the kernel's buffer, freeing a
        # slot: full is when a send still fails after it had time to.
        await asyncio.sleep(0.05)
        if not link.send_frame(b"x" * 1_000_000):
            return link, pull


async def test_an_abort_refused_by_a_full_socket_is_sent_once_there_is_room(tmp_path):
    link, pull = await full_link(tmp_path)
    link.streams["r1"] = RequestQueue(float("inf"))
    link.release("r1", abort=True)
    assert link.unsent_aborts == {"r1"}
    link.start()
    aborted: list[str] = []
    deadline = time.monotonic() + 10
    while "r1" not in aborted:
        assert time.monotonic() < deadline, "the Abort never arrived"
        if pull.poll(50):
            frame = pull.recv()
            if not frame.startswith(b"x") and frame != b"connected?":
                message = request_decoder.decode(frame)
                aborted += message.request_ids if isinstance(message, Abort) else []
        await asyncio.sleep(0)
    assert link.unsent_aborts == set()
    await link.stop()
    pull.close()


async def test_a_lost_engine_takes_its_unsent_aborts_with_it(tmp_path):
    link, pull = await full_link(tmp_path)
    link.engine_id = "e1"
    for request_id in ("a", "b"):
        link.streams[request_id] = RequestQueue(float("inf"))
    link.fail_all(RuntimeError, "stopping")
    assert link.unsent_aborts == {"a", "b"}
    link.engine_lost("no heartbeat", "heartbeat")
    assert link.unsent_aborts == set()
    link.push.close()
    link.sub.close()
    pull.close()
