"""The engine's socket threads on real ZeroMQ sockets (ipc in a temporary directory): each outlives
a message it cannot handle, and the heartbeat outlives NVML errors."""
import logging
import queue
import time

import pytest
import zmq

from common.config import EngineLinkConfig
from common.messages import CachedBlocks, Heartbeat, Hello, LoadReport, StepOutput, Welcome, encode, output_decoder
from engine_worker.io_threads import OutputPublisher, start_request_reader
from engine_worker.load import LoadTracker

LINK = EngineLinkConfig(heartbeat_interval_s=0.05)


@pytest.fixture
def addresses(tmp_path):
    return f"ipc://{tmp_path}/requests", f"ipc://{tmp_path}/outputs"


def test_the_request_reader_outlives_bad_messages(addresses, caplog):
    context = zmq.Context()
    inbox: queue.Queue = queue.Queue()
    deaths = []
    start_request_reader(context, addresses[0], LINK, lambda at, message: inbox.put((at, message)),
                         on_death=deaths.append)
    push = context.socket(zmq.PUSH)
    push.connect(addresses[0])
    for frame in [b"", b"\xff\x00garbage", encode({"not": "a request"}), encode(["hello", 5]), encode(["nope", "x"])]:
        push.send(frame)
    push.send(encode(Hello("fe~1")))
    received_at, message = inbox.get(timeout=5)
    assert message == Hello("fe~1") and abs(received_at - time.time()) < 60
    assert inbox.empty() and deaths == []
    assert caplog.text.count("dropped") == 5
    push.close()
    context.term()  # the reader's socket fails for good: it ends the process, through on_death
    assert len(deaths) == 1 and "request socket failed" in deaths[0]


class FailingNvml:
    """Stands in for pynvml on a device whose queries fail (as some do under MIG)."""

    class NVMLError(Exception):
        pass

    def __getattr__(self, name):
        def fail(*args):
            raise FailingNvml.NVMLError(f"{name}: Not Supported")

        return fail


def subscribe(context, address: str, *topics: bytes):
    sub = context.socket(zmq.SUB)
    sub.connect(address)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    return sub


def test_the_publisher_outlives_a_bad_message_and_nvml_errors(addresses, caplog):
    caplog.set_level(logging.INFO)
    context = zmq.Context()
    load = LoadTracker()
    load.gpus.nvml, load.gpus.handles = FailingNvml(), ["gpu-0"]
    publisher = OutputPublisher(context, addresses[1], LINK, "engine-1", load)
    sub = subscribe(context, addresses[1], b"")
    heartbeats = []
    deadline = time.monotonic() + 10
    while len(heartbeats) < 3 and time.monotonic() < deadline:
        if sub.poll(100):
            message = output_decoder.decode(sub.recv_multipart()[1])
            if isinstance(message, Heartbeat):
                heartbeats.append(message)
    assert len(heartbeats) == 3 and all(h.load.gpus == [] for h in heartbeats)
    assert caplog.text.count("stopped reading GPU figures") == 1
    publisher.send("fe~1", object())  # cannot be encoded
    publisher.send("fe~1", Welcome("engine-1", "fe~1", "m", "t", 8))
    publisher.send("fe~1", StepOutput("engine-1", 0, []))
    seen = []
    while len(seen) < 2 and time.monotonic() < deadline:
        if sub.poll(100):
            message = output_decoder.decode(sub.recv_multipart()[1])
            if not isinstance(message, Heartbeat):
                seen.append(message)
    assert [type(m) for m in seen] == [Welcome, StepOutput] and seen[1].seq == 1
    assert "could not publish a object" in caplog.text
    publisher.close()
    context.destroy()


def test_a_forgotten_frontend_leaves_the_heartbeat(addresses):
    context = zmq.Context()
    publisher = OutputPublisher(context, addresses[1], LINK, "engine-1", LoadTracker())
    sub = subscribe(context, addresses[1], b"*|")
    publisher.send("fe~1", Welcome("engine-1", "fe~1", "m", "t", 8))
    publisher.send("fe~1", StepOutput("engine-1", 0, []))
    publisher.forget("fe~1")
    publisher.send("fe~2", Welcome("engine-1", "fe~2", "m", "t", 8))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sub.poll(100):
            message = output_decoder.decode(sub.recv_multipart()[1])
            if message.last_seqs == {"fe~2": 0}:
                break
    else:
        pytest.fail("no heartbeat without the forgotten frontend")
    publisher.close()
    context.destroy()



def test_load_reports_are_numbered_and_name_the_last_cache_change(addresses):
    context = zmq.Context()
    publisher = OutputPublisher(context, addresses[1], LINK, "engine-1", LoadTracker())
    sub = subscribe(context, addresses[1], b"*|")
    deadline = time.monotonic() + 10
    while not sub.poll(100):  # subscribed once a heartbeat comes
        assert time.monotonic() < deadline
    publisher.send(None, LoadReport("engine-1", 0, 1, 2, 300, 40, 5))
    publisher.send(None, CachedBlocks("engine-1", 7, [1, 2], [], False))
    publisher.send(None, LoadReport("engine-1", 0, 1, 2, 300, 40, 5))
    reports = []
    while len(reports) < 2 and time.monotonic() < deadline:
        if sub.poll(100):
            message = output_decoder.decode(sub.recv_multipart()[1])
            if isinstance(message, LoadReport):
                reports.append(message)
    assert [(report.seq, report.cache_seq) for report in reports] == [(1, 0), (2, 7)]
    publisher.close()
    context.destroy()
