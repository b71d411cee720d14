"""Every message type survives msgpack encoding and decodes into its own type."""
import msgspec
import pytest

from common.messages import (
    Abort, Add, CachedBlocks, Delta, EngineLoad, Goodbye, GpuLoad, Heartbeat, Hello, LoadReport, Resync, StepOutput,
    TokenLogprob, Welcome, encode, output_decoder, request_decoder, topic_for,
)

REQUESTS = [
    Add("r1", "fe-0", [1, 2, 3], {"max_tokens": 16, "temperature": 0.5, "stop_token_ids": [7]}),
    Abort(["r1", "r2"]),
    Hello("fe-0"),
    Resync("fe-0"),
]
OUTPUTS = [
    StepOutput("e1", 3, [Delta("r1", [5, 6]), Delta("r2", [], "error", error="too long"),
                         Delta("r3", [9], "length", logprobs=[[TokenLogprob(9, -0.5, 1), TokenLogprob(4, -1.0, 2)]])]),
    Welcome("e1", "fe-0", "tiny", "/models/tiny", 8192),
    Heartbeat("e1", EngineLoad(2, 1, 0.25, 100, 50, [GpuLoad(0, "H100", 90.0, 10, 80, 300.5)]), {"fe-0": 3},
              cache_seq=12),
    LoadReport("e1", 41, 3, 250, 12_000, 160_000, 9_000, {"fe-0": 17, "fe-1": 4}, cache_seq=12),
    CachedBlocks("e1", 12, [-5, 2**63 - 1], [7], False),
    CachedBlocks("e1", 12, [1, 2, 3], [], True),
    Goodbye("e1"),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(message):
    assert request_decoder.decode(encode(message)) == message


@pytest.mark.parametrize("message", OUTPUTS, ids=lambda m: type(m).__name__)
def test_outputs_round_trip(message):
    assert output_decoder.decode(encode(message)) == message


def test_a_message_of_the_wrong_direction_is_refused():
    with pytest.raises(msgspec.ValidationError):
        request_decoder.decode(encode(Goodbye("e1")))


def test_type_tag_comes_first_and_fields_follow_in_order():
    assert msgspec.msgpack.decode(encode(Hello("fe-0"))) == ["hello", "fe-0"]


def test_topics_do_not_prefix_each_other():
    assert not topic_for("fe-10").startswith(topic_for("fe-1"))
