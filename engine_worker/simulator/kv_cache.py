"""The simulated engine's paged KV cache, as vLLM v1's KVCacheManager and BlockPool keep one attention
group's: blocks of `block_size` tokens, reference counts, prefix caching by chained block hashes over
full blocks, and a queue of free blocks from which a new block is taken at the front, evicting the
cached prefix it held. Freed blocks that hold a cached prefix go to the back in the order given (a
request's blocks tail first, so its prefix's first blocks stay longest); freed blocks that hold none
go to the front, reused first. Block 0 is vLLM's null block, never handed out.

The cache reports what it takes in and evicts as events with the names and fields of vLLM's
KV-cache events (BlockStored, BlockRemoved, AllBlocksCleared), which engine_worker/cache_events.py reads.
As vLLM's, its prefix cache can be emptied only while no request holds a block (`reset_prefix_cache`).
"""
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str = "GPU"
    lora_name: str | None = None
    extra_keys: list | None = None
    group_idx: int = 0


@dataclass
class BlockRemoved:
    block_hashes: list[int]
    medium: str = "GPU"
    group_idx: int = 0


@dataclass
class AllBlocksCleared:
    medium: str = "GPU"


@dataclass
class PrefixCacheStats:
    """vLLM's PrefixCacheStats: prompt tokens looked up since the last report, and those found.
    A preempted request's second lookup is counted apart, as vLLM does."""

    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0
    reset: bool = False

    def record(self, tokens: int, hits: int, preempted: bool) -> None:
        if preempted:
            self.preempted_requests += 1
            self.preempted_queries += tokens
            self.preempted_hits += hits
        else:
            self.requests += 1
            self.queries += tokens
            self.hits += hits


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: int | None = None


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool, events: list | None):
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks[1:])
        self.cached: dict[int, dict[int, Block]] = {}  # hash -> the blocks holding it, by id
        self.enable_caching = enable_caching
        self.events = events

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - self.num_free / (len(self.blocks) - 1)

    def cached_block(self, block_hash: int) -> Block | None:
        holders = self.cached.get(block_hash)
        return next(iter(holders.values())) if holders else None

    def take(self, count: int) -> list[Block]:
        """`count` blocks from the front of the free queue, each evicted from the prefix cache."""
        taken = []
        for _ in range(count):
            _, block = self.free.popitem(last=False)
            self.evict(block)
            block.ref_count = 1
            taken.append(block)
        return taken

    def touch(self, blocks: list[Block]) -> None:
        """Another request uses these cached blocks: out of the free queue if they were in it."""
        for block in blocks:
            if block.ref_count == 0:
                del self.free[block.block_id]
            block.ref_count += 1

    def release(self, blocks) -> None:
        """Drop one reference to each block, `blocks` ordered by eviction priority (first evicted first)."""
        reuse_first, keep_longest = [], []
        for block in blocks:
            block.ref_count -= 1
            if block.ref_count == 0:
                (keep_longest if block.block_hash is not None else reuse_first).append(block)
        for block in reversed(reuse_first):
            self.free[block.block_id] = block
            self.free.move_to_end(block.block_id, last=False)
        for block in keep_longest:
            self.free[block.block_id] = block

    def cache(self, block: Block, block_hash: int) -> None:
        block.block_hash = block_hash
        self.cached.setdefault(block_hash, {})[block.block_id] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix, as vLLM's BlockPool does: only when every block is free."""
        if self.num_free != len(self.blocks) - 1:
            return False
        self.cached.clear()
        for block in self.blocks:
            block.block_hash = None
        if self.events is not None:
            self.events.append(AllBlocksCleared())
        return True

    def evict(self, block: Block) -> None:
        if block.block_hash is None:
            return
        holders = self.cached[block.block_hash]
        del holders[block.block_id]
        if not holders:
            del self.cached[block.block_hash]
        if self.events is not None:
            self.events.append(BlockRemoved([block.block_hash]))
        block.block_hash = None


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Which blocks each request holds; requests are the scheduler's (engine_worker/simulator/scheduler.py)."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True, report_events: bool = False):
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.events: list | None = [] if report_events else None
        self.pool = BlockPool(num_blocks, enable_caching, self.events)
        self.blocks_of: dict[str, list[Block]] = {}
        self.num_cached: dict[str, int] = {}  # request id -> its leading blocks already in the prefix cache
        self.stats = PrefixCacheStats()

    def usage(self) -> float:
        return self.pool.usage()

    def computed_blocks(self, request) -> list[Block]:
        """The cached blocks of the request's longest cached prefix; the last token is always computed
        again, for its logits, as vLLM does."""
        if not self.enable_caching:
            return []
        hit = []
        for block_hash in request.block_hashes[:(request.num_tokens - 1) // self.block_size]:
            block = self.pool.cached_block(block_hash)
            if block is None:
                break
            hit.append(block)
        return hit

    def record_lookup(self, request, hit_tokens: int) -> None:
        if self.enable_caching:
            self.stats.record(request.num_tokens, hit_tokens, request.num_preemptions > 0)

    def allocate(self, request, num_new_tokens: int, hit: list[Block] = (), whole: bool = False) -> bool:
        """Slots for the request's next `num_new_tokens` (after `hit`, a new request's cached prefix);
        False, changing nothing, when too few blocks are free, or with `whole` when its whole sequence
        would not fit (vLLM's scheduler_reserve_full_isl). Caches the blocks those tokens fill."""
        held = self.blocks_of.setdefault(request.request_id, [])
        computed = request.num_computed_tokens + len(hit) * self.block_size
        reclaimed = sum(1 for block in hit if block.ref_count == 0)  # leaving the free queue
        needed = max(cdiv(computed + num_new_tokens, self.block_size) - len(held) - len(hit), 0)
        reserved = max(cdiv(request.num_tokens, self.block_size) - len(held) - len(hit), 0) if whole else 0
        if max(needed, reserved) + reclaimed > self.pool.num_free:
            return False
        if hit:
            self.pool.touch(hit)
            held.extend(hit)
            self.num_cached.setdefault(request.request_id, len(hit))
        held.extend(self.pool.take(needed))
        self.cache_full_blocks(request, min(computed + num_new_tokens, request.num_tokens))
        return True

    def cache_full_blocks(self, request, num_tokens: int) -> None:
        held = self.blocks_of[request.request_id]
        first = self.num_cached.get(request.request_id, 0)
        full = num_tokens // self.block_size
        if not self.enable_caching or full <= first:
            return
        for index in range(first, full):
            self.pool.cache(held[index], request.block_hashes[index])
        self.num_cached[request.request_id] = full
        if self.events is not None:
            self.events.append(BlockStored(
                request.block_hashes[first:full], request.block_hashes[first - 1] if first else None,
                request.token_ids[first * self.block_size:full * self.block_size], self.block_size))

    def free(self, request) -> None:
        """Give back the request's blocks, tail first: its prefix's first blocks are evicted last."""
        self.pool.release(reversed(self.blocks_of.pop(request.request_id, [])))
        self.num_cached.pop(request.request_id, None)

    def reset_prefix_cache(self) -> bool:
        if not self.pool.reset_prefix_cache():
            return False
        self.stats.reset = True
        return True

    def take_events(self) -> list:
        if not self.events:
            return []
        events = list(self.events)
        self.events.clear()
        return events

    def take_stats(self) -> PrefixCacheStats:
        stats, self.stats = self.stats, PrefixCacheStats()
        return stats
