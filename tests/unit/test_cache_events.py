"""Exact placement: vLLM's KV-cache events (from vLLM's own publisher, on real ZeroMQ sockets) become
the router's block hashes in engine_worker/cache_events.py, go out on the engine's PUB socket, and
tell every frontend's router which engine holds a prefix."""
import queue
import time

import pytest
import zmq
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, ZmqEventPublisher

from common.blocks import block_hashes
from common.config import EngineLinkConfig, RouterConfig
from common.messages import Add, CachedBlocks, Heartbeat, Welcome, output_decoder
from engine_worker.admission import admitter
from engine_worker.cache_events import TOPIC, CacheIndex, start_cache_event_reader
from engine_worker.io_threads import OutputPublisher
from engine_worker.load import LoadTracker
from engine_worker.step_loop import Admitted
from frontend import router as router_module
from frontend.router import Router
from tests.unit.test_router import fleet

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
    assert first == CachedBlocks("engine-1", 1, ours[:2], [], False)
    assert (second.seq, second.stored) == (2, ours[2:6])
    assert index.snapshot() == CachedBlocks("engine-1", 2, ours[:6], [], True)  # up to change 2
    # Evicting a vLLM block drops both of the router's blocks in it; one batch's net change is sent.
    assert index.apply([BlockRemoved([9002], "GPU")]) == CachedBlocks("engine-1", 3, [], ours[4:6], False)
    assert index.apply([BlockRemoved([9001], "GPU"), stored(range(1, 2), 9000)]).stored == ours[2:4]
    assert index.apply([AllBlocksCleared()]) == CachedBlocks("engine-1", 5, [], [], True, emptied=True)
    assert index.snapshot() == CachedBlocks("engine-1", 5, [], [], True)  # a whole state, nothing emptied
    assert index.apply([BlockRemoved([9000], "GPU")]) is None  # nothing a router knows changed
    # vLLM's own event at its next step, after the one the engine worker relayed: nothing more is emptied.
    assert index.apply([AllBlocksCleared(), stored(range(0, 1), None)]) == CachedBlocks("engine-1", 6, ours[:2], [], False)


def test_the_index_estimates_how_much_of_a_prompt_the_cache_holds():
    index = CacheIndex("engine-1", BLOCK)
    assert index.cached_tokens(PROMPT) == 0
    index.apply([stored(range(0, 2), None)])  # two vLLM blocks: the prompt's first 64 tokens
    assert index.cached_tokens(PROMPT) == 64
    assert index.cached_tokens(PROMPT[:40]) == 32  # the partial third router block is not counted
    assert index.cached_tokens([7] + PROMPT[1:]) == 0  # another first token: another chain
    index.apply([BlockRemoved([9001], "GPU")])
    assert index.cached_tokens(PROMPT) == 32
    index.apply([AllBlocksCleared()])
    assert index.cached_tokens(PROMPT) == 0


def test_admission_gives_each_request_the_prompt_tokens_the_cache_lacks():
    inbox = queue.Queue()
    index = CacheIndex("engine-1", BLOCK)
    index.apply([stored(range(0, 1), None)])  # the prompt's first 32 tokens
    admit = admitter(inbox, lambda message, at, trace_headers: Admitted(message, "prompt", "params"), index)
    admit(1.0, Add("a", "fe~1", PROMPT, {}))
    admit(2.0, Add("b", "fe~1", [5] + PROMPT[1:], {}))
    assert [inbox.get(timeout=5)[1].prefill_tokens for _ in range(2)] == [100 - 32, 100]


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
    publisher = OutputPublisher(context, outputs, EngineLinkConfig(heartbeat_interval_s=0.05), "engine-1",
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
    assert snapshot.cleared and sorted(snapshot.stored) == sorted(ours[:6]) and snapshot.seq == index.seq
    # Heartbeats name the last change sent, so a frontend that lost it notices; a Resync gets a snapshot.
    while receive(sub, Heartbeat, deadline).cache_seq != index.seq:
        pass
    publisher.snapshot("fe~1")
    assert receive(sub, CachedBlocks, deadline) == snapshot
    vllm_publisher.shutdown()
    publisher.close()
    publisher.socket.close(linger=0)
    sub.close(linger=0)
    context.term()  # the reader's blocked receive fails: it closes its socket and ends


def test_the_router_places_by_what_engines_report_and_forgets_its_own_sends(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: now[0])
    policy, engines = Router(RouterConfig(block_size=BLOCK), 2), fleet()
    home = Router(RouterConfig(block_size=BLOCK), 2).pick(PROMPT, fleet()).rank
    holder = 1 - home
    # Another frontend's request left the prefix on the engine that is not its home: this frontend
    # never sent it there, but the engine's report says it holds it.
    for rank in (0, 1):
        engines[rank].cache_record.apply(CachedBlocks(f"engine-{rank}", 0, [], [], True))
    engines[holder].cache_record.apply(CachedBlocks("engine", 1, block_hashes(PROMPT, BLOCK), [], False))
    assert policy.pick(PROMPT + [1, 2, 3], engines)[:2] == (holder, "prefix")
    # The engine evicts it: the prompt goes home, and this frontend's send counts there for a while.
    engines[holder].cache_record.apply(CachedBlocks("engine", 2, [], block_hashes(PROMPT, BLOCK), False))
    assert policy.pick(PROMPT, engines)[:2] == (holder, "prefix")  # still its own recent send to the holder
    now[0] += router_module.SENT_MEMORY_S + 1
    assert policy.pick(PROMPT, engines)[:2] == (home, "prefix")
    now[0] += router_module.SENT_MEMORY_S + 1  # the home never reported it: the send is forgotten
    assert policy.run(home, engines[home], block_hashes(PROMPT, BLOCK)) == 0 and not policy.sent[home]
