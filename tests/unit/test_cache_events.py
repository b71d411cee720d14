"""Exact placement: vLLM's KV-cache events (from vLLM's own publisher, on real ZeroMQ sockets) become
the router's block hashes in engine_worker/cache_events.py, go out on the engine's PUB socket, and
tell every frontend's router which engine holds a prefix."""
import time

import pytest
import zmq
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, ZmqEventPublisher

from common.blocks import block_hashes
from common.config import EngineLink, RouterConfig
from common.messages import CachedBlocks, Heartbeat, Welcome, output_decoder
from engine_worker.cache_events import TOPIC, CacheIndex, start_cache_event_reader
from engine_worker.io_threads import OutputPublisher
from engine_worker.load import LoadTracker
from frontend import router as router_module
from frontend.router import Router

VLLM_BLOCK, BLOCK = 32, 16
PROMPT = list(range(1000, 1100))  # three full vLLM blocks and a partial one


def stored(blocks: range, parent, **extra) -> BlockStored:
    """vLLM's event for caching PROMPT's vLLM blocks `blocks` (its hashes are its own: here 9000 + i)."""
    tokens = PROMPT[blocks.start * VLLM_BLOCK:blocks.stop * VLLM_BLOCK]
    fields = {"lora_id": None, "medium": "GPU", "lora_name": None, **extra}
    return BlockStored([9000 + i for i in blocks], parent, tokens, VLLM_BLOCK, **fields)


def test_cached_blocks_become_the_routers_hashes_of_the_same_tokens():
    index = CacheIndex("engine-1", BLOCK)
    first = index.apply([stored(range(0, 1), None)])
    second = index.apply([stored(range(1, 3), 9000)])
    ours = block_hashes(PROMPT, BLOCK)  # what a router computes for the prompt: 6 full blocks
    assert first == CachedBlocks("engine-1", ours[:2], [], False)
    assert second.stored == ours[2:6]
    assert index.snapshot() == CachedBlocks("engine-1", ours[:6], [], True)
    # Evicting a vLLM block drops both of the router's blocks in it; one batch's net change is sent.
    assert index.apply([BlockRemoved([9002], "GPU")]) == CachedBlocks("engine-1", [], ours[4:6], False)
    assert index.apply([BlockRemoved([9001], "GPU"), stored(range(1, 2), 9000)]).stored == ours[2:4]
    assert index.apply([AllBlocksCleared()]) == CachedBlocks("engine-1", [], [], True)
    assert index.snapshot().stored == []
    assert index.apply([BlockRemoved([9000], "GPU")]) is None  # nothing a router knows changed


def test_blocks_a_router_cannot_tell_apart_are_not_reported(caplog):
    index = CacheIndex("engine-1", BLOCK)
    # An adapter's or an image's blocks hash differently in vLLM but have the same token ids.
    assert index.apply([stored(range(0, 1), None, lora_name="sql", lora_id=1)]) is None
    assert index.apply([stored(range(0, 1), None, extra_keys=[("image-1", 0)])]) is None
    assert index.apply([stored(range(1, 2), 1234)]) is None
    assert index.apply([stored(range(0, 1), None, group_idx=1)]) is None
    assert index.apply([stored(range(0, 1), None, medium="CPU")]) is None  # an offloading tier's copy
    odd = CacheIndex("engine-1", 24)  # 32 is no multiple of 24
    assert odd.apply([stored(range(0, 1), None)]) is None and odd.apply([stored(range(0, 1), None)]) is None
    assert caplog.text.count("not a multiple of router.block_size") == 1


def receive(sub, kind, deadline: float):
    while time.monotonic() < deadline:
        if sub.poll(100):
            message = output_decoder.decode(sub.recv_multipart()[1])
            if isinstance(message, kind):
                return message
    pytest.fail(f"no {kind.__name__} arrived")


def test_vllms_events_reach_the_frontends_and_a_welcome_brings_a_snapshot(tmp_path):
    context = zmq.Context()
    endpoint, outputs = f"ipc://{tmp_path}/kv-events", f"ipc://{tmp_path}/outputs"
    vllm_publisher = ZmqEventPublisher(0, endpoint=endpoint, topic=TOPIC)
    index = CacheIndex("engine-1", BLOCK)
    publisher = OutputPublisher(context, outputs, EngineLink(heartbeat_interval_s=0.05), "engine-1",
                                LoadTracker(), cache=index)
    start_cache_event_reader(context, endpoint, index, lambda change: publisher.send(None, change))
    sub = context.socket(zmq.SUB)
    sub.connect(outputs)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    deadline = time.monotonic() + 20
    receive(sub, Heartbeat, deadline)  # subscribed
    ours = block_hashes(PROMPT, BLOCK)
    change = None
    while change is None and time.monotonic() < deadline:  # the reader may still be joining vLLM's socket
        vllm_publisher.publish(KVEventBatch(time.time(), [stored(range(0, 3), None)]))
        if sub.poll(300):
            message = output_decoder.decode(sub.recv_multipart()[1])
            change = message if isinstance(message, CachedBlocks) else None
    assert change.engine_id == "engine-1" and change.stored == ours[:6]
    publisher.send("fe~1", Welcome("engine-1", "fe~1", "m", "t", 8))
    receive(sub, Welcome, deadline)
    snapshot = receive(sub, CachedBlocks, deadline)
    assert snapshot.cleared and sorted(snapshot.stored) == sorted(ours[:6])
    vllm_publisher.shutdown()
    publisher.close()
    publisher.socket.close(linger=0)
    sub.close(linger=0)
    context.term()  # the reader's blocked receive fails: it closes its socket and ends


def test_the_router_places_by_what_engines_report_and_forgets_its_own_sends(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: now[0])
    policy = Router(RouterConfig(block_size=BLOCK), 2)
    loads = {0: 0.0, 1: 0.0}
    home, _ = policy.home(block_hashes(PROMPT, BLOCK), loads, least=0)
    holder = 1 - home
    # Another frontend's request left the prefix on the engine that is not its home: this frontend
    # never sent it there, but the engine's report says it holds it.
    for rank in (0, 1):
        policy.cache_changed(rank, CachedBlocks(f"engine-{rank}", [], [], True))
    policy.cache_changed(holder, CachedBlocks("engine", block_hashes(PROMPT, BLOCK), [], False))
    assert policy.pick(PROMPT + [1, 2, 3], loads) == (holder, "prefix")
    # The engine evicts it: the prompt goes home, and this frontend's send counts there for a while.
    policy.cache_changed(holder, CachedBlocks("engine", [], block_hashes(PROMPT, BLOCK), False))
    assert policy.pick(PROMPT, loads) == (holder, "prefix")  # still its own recent send to the holder
    now[0] += router_module.SENT_MEMORY_S + 1
    assert policy.pick(PROMPT, loads) == (home, "prefix")
    now[0] += router_module.SENT_MEMORY_S + 1  # the home never reported it: the send is forgotten
    assert policy.holder(block_hashes(PROMPT, BLOCK), loads) is None and not policy.cached[home]
    policy.forget(holder)
    assert not policy.reporting[holder] and policy.reporting[home] and not policy.held[holder]
