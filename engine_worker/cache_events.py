"""What this engine holds in its prefix cache, told to every frontend so their routers place prompts
exactly (docs/fleet.md, "Exact placement").

vLLM publishes a KV-cache event for each block it caches or evicts (its `kv_events_config`, on a
ZeroMQ socket of its engine core; a simulated engine through a queue). A thread here reads them, turns each cached block into the
router's own block hashes (common/blocks.py, over `router.block_size` tokens) and queues
`CachedBlocks` for the publisher, which sends them on the broadcast topic, numbered so a frontend
sees a loss, and a whole `snapshot` after each Welcome and each Resync. The same index estimates, for
each request the engine takes, how much of its prompt the prefix cache already holds
(`cached_tokens`, for the load report). What is kept is one entry per block vLLM holds: bounded by
its KV cache. When the engine empties its prefix cache (an operator's reset), vLLM's AllBlocksCleared
goes out only with its next step; the step loop relays one at once (`relay_emptied`).
"""
import logging
import queue
import threading

import msgspec
import zmq

from common.messages import CachedBlocks
from common.blocks import block_hashes

log = logging.getLogger(__name__)

TOPIC = "kv"


def kv_events_config(run_dir, rank: int) -> dict:
    """vLLM's `kv_events_config` for engine `rank`: its events on an ipc socket of its own."""
    return {"enable_kv_cache_events": True, "publisher": "zmq", "topic": TOPIC,
            "endpoint": f"ipc://{run_dir}/engine-{rank}-kv-events"}


class CacheIndex:
    """vLLM's block hashes -> the router's hashes of the same tokens."""

    def __init__(self, engine_id: str, block_size: int):
        self.engine_id = engine_id
        self.block_size = block_size
        self.blocks: dict[object, list[int]] = {}
        self.held: set[int] = set()  # every router hash in `blocks`
        self.seq = 0  # the number of the last change
        self.lock = threading.Lock()  # the reader thread writes; snapshots and admission read
        self.relaying = threading.Lock()  # changes go out in the order of their numbers, from either thread
        self.warned = False

    def apply(self, events) -> CachedBlocks | None:
        """The change vLLM's events make, as one message (None when nothing a router uses changed)."""
        change: dict[int, bool] = {}  # router hash -> held after these events
        cleared = False
        with self.lock:
            for event in events:
                kind = type(event).__name__
                if getattr(event, "medium", None) not in (None, "GPU"):
                    continue  # an offloading tier's copy (CPU memory, storage): not what a prefill reuses
                if kind == "BlockStored":
                    change.update(dict.fromkeys(self.store(event), True))
                elif kind == "BlockRemoved" and getattr(event, "group_idx", None) in (None, 0):
                    for block in event.block_hashes:
                        change.update(dict.fromkeys(self.blocks.pop(block, []), False))
                elif kind == "AllBlocksCleared" and (self.blocks or change):
                    # Not when it holds nothing: vLLM's own event follows the one the step loop relayed.
                    self.blocks.clear()
                    change, cleared = {}, True
            if not (change or cleared):
                return None
            stored = [block for block, held in change.items() if held]
            removed = [block for block, held in change.items() if not held]
            if cleared:
                self.held.clear()
            self.held.difference_update(removed)
            self.held.update(stored)
            self.seq += 1
            return CachedBlocks(self.engine_id, self.seq, stored, removed, cleared, emptied=cleared)

    def store(self, event) -> list[int]:
        """The router's hashes of the blocks one BlockStored caches. Skipped: blocks of a LoRA adapter,
        an image or a cache salt (the router hashes token ids only, so their tokens would match the
        base model's), blocks of a second KV group, and blocks whose parent is unknown here."""
        extra = getattr(event, "extra_keys", None) or []
        if (getattr(event, "lora_name", None) or getattr(event, "lora_id", None) or any(extra)
                or getattr(event, "group_idx", None) not in (None, 0)):
            return []
        if event.block_size % self.block_size:
            if not self.warned:
                log.warning("vLLM's block size %d is not a multiple of router.block_size %d: "
                            "no cached blocks are reported", event.block_size, self.block_size)
                self.warned = True
            return []
        parent = 0
        if event.parent_block_hash is not None:
            if event.parent_block_hash not in self.blocks:
                return []
            parent = self.blocks[event.parent_block_hash][-1]
        stored = []
        for index, block in enumerate(event.block_hashes):
            tokens = event.token_ids[index * event.block_size:(index + 1) * event.block_size]
            ours = block_hashes(tokens, self.block_size, parent)
            if len(ours) != event.block_size // self.block_size:
                break  # a short block: nothing after it chains
            self.blocks[block] = ours
            stored += ours
            parent = ours[-1]
        return stored

    def snapshot(self) -> CachedBlocks:
        with self.lock:
            held = [ours for blocks in self.blocks.values() for ours in blocks]
            return CachedBlocks(self.engine_id, self.seq, held, [], True)

    def cached_tokens(self, token_ids: list[int]) -> int:
        """Tokens of the prompt's leading blocks held in the prefix cache now."""
        hashes = block_hashes(token_ids, self.block_size)
        with self.lock:
            run = next((index for index, block in enumerate(hashes) if block not in self.held), len(hashes))
        return run * self.block_size


def start_cache_event_reader(context, endpoint: str, index: CacheIndex, publish) -> None:
    """Reads vLLM's KV-cache events from `endpoint` and hands each change to `publish`."""
    from vllm.distributed.kv_events import KVEventBatch

    decoder = msgspec.msgpack.Decoder(KVEventBatch)
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
    socket.connect(endpoint)

    def read_forever():
        while True:
            try:
                frames = socket.recv_multipart()  # topic, sequence number, payload
            except Exception as error:  # the context was terminated: the engine is stopping
                log.info("stopped reading KV-cache events: %r", error)
                socket.close()
                return
            try:
                relay(index, decoder.decode(frames[-1]).events, publish)
            except Exception:  # one bad batch must not end the reading
                log.exception("dropped a batch of KV-cache events")

    threading.Thread(target=read_forever, name="cache-events", daemon=True).start()


def start_cache_event_relay(batches: queue.Queue, index: CacheIndex, publish) -> None:
    """The same for a simulated engine, whose events (with the names and fields of vLLM's) come
    through a queue instead of a socket."""

    def relay_forever():
        while True:
            events = batches.get()
            try:
                relay(index, events, publish)
            except Exception:
                log.exception("dropped a batch of KV-cache events")

    threading.Thread(target=relay_forever, name="cache-events", daemon=True).start()


def relay(index: CacheIndex, events, publish) -> None:
    with index.relaying:
        change = index.apply(events)
        if change is not None:
            publish(change)


class AllBlocksCleared:
    """vLLM's KV-cache event of that name (it has no fields)."""


def relay_emptied(index: CacheIndex, publish) -> None:
    """The engine emptied its prefix cache: every frontend's record of it empties now, not at its next step."""
    relay(index, [AllBlocksCleared()], publish)
