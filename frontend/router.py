"""Which engine each request goes to, decided in each frontend with no shared state (docs/fleet.md).

1. `X-data-parallel-rank: i` pins the request to engine i (as vLLM's API server accepts).
2. Out of balance (the load scores of the most and least loaded engines differ by more than
   balance_abs_threshold and by more than balance_rel_threshold times): the least loaded.
3. The engine holding the longest run of the prompt's leading blocks, when that run covers at least
   min_match_ratio of the prompt. Held means the engine reported those blocks in its prefix cache
   (placement "exact", vLLM's KV-cache events via engine_worker/cache_events.py) or this frontend
   sent them there (within SENT_MEMORY_S for a reporting engine; with placement "approximate", until
   forgotten: bounded, least recently sent first). Only step 2 overrides this, as in SGLang's
   cache-aware router: sending a held prefix elsewhere because its engine queues a little spreads
   every prefix over every engine (measured on 4×H100).
4. Queueing, for a prompt no engine holds: when the engine step 5 chooses has requests waiting in its
   scheduler (its last heartbeat) while another has none, the least loaded of those with none. A
   request queued behind a full engine waits for a running one to finish; a new prompt loses no cache.
5. A prompt no engine holds goes to its home: the engine the first min_match_ratio of its blocks
   hash to (rendezvous hashing over the engines that are up). Every frontend computes the same home,
   so prompts sharing a prefix meet on one engine even when different frontends route them. But
   only while the home is within one queued request (HOME_SLACK) of the least loaded: a burst of
   new prompts arrives faster than heartbeats, and hashing alone piles them up unevenly (each
   frontend counts its own sends, so a burst is split nearly evenly instead).
6. A prompt shorter than one block: the least loaded.
Block hashes chain as vLLM's do (common/blocks.py). All an engine held is forgotten when it restarts.
"""
import contextlib
import contextvars
import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from common.blocks import block_hashes
from common.config import RouterConfig
from common.messages import CachedBlocks
from frontend.http import HTTPError, error_response, header_number

PIN_HEADER = "X-data-parallel-rank"
HOME_SLACK = 4.0  # one waiting request in vLLM's load score
# With an engine reporting its prefix cache, what this frontend sent there counts for this long: until
# the engine's report of those blocks can have come (after their prefill, which a queue delays).
SENT_MEMORY_S = 10.0


def rendezvous(key: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{key}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    def __init__(self, config: RouterConfig, engines: int):
        self.config = config
        # What this frontend sent to each engine: block hash -> when, least recently sent first.
        self.cached: list[OrderedDict[int, float]] = [OrderedDict() for _ in range(engines)]
        # What each engine reports its prefix cache holds (exact placement), and which engines report.
        self.held: list[set[int]] = [set() for _ in range(engines)]
        self.reporting = [False] * engines

    def pick(self, token_ids: list[int], loads: dict[int, float],
             waiting: dict[int, int] | None = None) -> tuple[int, str]:
        """(rank, reason) among `loads`, the load scores of the engines that are up; `waiting` is each
        one's queue as its last heartbeat gave it."""
        least = min(loads, key=lambda rank: (loads[rank], rank))
        if self.config.policy == "load":
            return least, "load"
        blocks = block_hashes(token_ids, self.config.block_size)
        if not blocks:
            return least, "load"
        if self.out_of_balance(loads):
            rank, reason = least, "load"
        else:
            rank, reason = self.holder(blocks, loads) or self.unqueued(
                *self.home(blocks, loads, least), loads, waiting or {})
        self.remember(rank, blocks)
        return rank, reason

    def out_of_balance(self, loads: dict[int, float]) -> bool:
        most, least = max(loads.values()), min(loads.values())
        return most - least > self.config.balance_abs_threshold and most > least * self.config.balance_rel_threshold

    def unqueued(self, rank: int, reason: str, loads: dict[int, float], waiting: dict[int, int]) -> tuple[int, str]:
        """`rank`, unless it has a queue while another engine has none: then the least loaded of those."""
        free = [other for other in loads if not waiting.get(other)]
        if not waiting.get(rank) or not free:
            return rank, reason
        return min(free, key=lambda other: (loads[other], other)), "load"

    def holder(self, blocks: list[int], loads: dict[int, float]) -> tuple[int, str] | None:
        """The engine holding the longest leading run of `blocks`, if it covers enough of the prompt."""
        best, matched = None, 0
        for rank in loads:
            self.expire(rank)
            sent, held = self.cached[rank], self.held[rank]
            run = 0
            while run < len(blocks) and (blocks[run] in held or blocks[run] in sent):
                run += 1
            if run > matched or (run == matched and best is not None and loads[rank] < loads[best]):
                best, matched = rank, run
        if best is None or matched < self.config.min_match_ratio * len(blocks):
            return None
        return best, "prefix"

    def home(self, blocks: list[int], loads: dict[int, float], least: int) -> tuple[int, str]:
        key = blocks[max(math.floor(self.config.min_match_ratio * len(blocks)), 1) - 1]
        home = max(loads, key=lambda rank: rendezvous(key, rank))
        if loads[home] - loads[least] > HOME_SLACK:
            return least, "load"
        return home, "prefix"

    def remember(self, rank: int, blocks: list[int]) -> None:
        cached, now = self.cached[rank], time.monotonic()
        for block in blocks:
            cached[block] = now
            cached.move_to_end(block)
        while len(cached) > self.config.blocks_per_engine:
            cached.popitem(last=False)

    def expire(self, rank: int) -> None:
        """Drop sends older than SENT_MEMORY_S from an engine that reports its cache."""
        cached, cutoff = self.cached[rank], time.monotonic() - SENT_MEMORY_S
        while self.reporting[rank] and cached and next(iter(cached.values())) < cutoff:
            cached.popitem(last=False)

    def cache_changed(self, rank: int, change: CachedBlocks) -> None:
        """Engine `rank` reports blocks its prefix cache took in and dropped."""
        held = self.held[rank]
        if change.cleared:
            held.clear()
            self.reporting[rank] = True
        held.difference_update(change.removed)
        held.update(change.stored)

    def forget(self, rank: int) -> None:
        """The engine restarted or was lost: its prefix cache is gone."""
        self.cached[rank].clear()
        self.held[rank].clear()
        self.reporting[rank] = False


@dataclass
class RoutingScope:
    """One HTTP request's routing: its pinned rank, the LoRA adapter its `model` names (set by
    served_model; only engines holding it may take the request), and the engine its first generation
    went to, where the others (n > 1, several prompts) go too."""
    pinned: int | None = None
    rank: int | None = None
    reason: str = ""
    lora: str | None = None


_scope: contextvars.ContextVar[RoutingScope | None] = contextvars.ContextVar("routing_scope", default=None)


def current_scope() -> RoutingScope | None:
    return _scope.get()


@contextlib.contextmanager
def routing_scope(scope: RoutingScope):
    """Make `scope` the current one until the block ends."""
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


class RoutingScopeMiddleware:
    """Gives each HTTP request its RoutingScope; a pin header naming no engine is a 400."""

    def __init__(self, app, engines: int):
        self.app = app
        self.engines = engines

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = next((v for k, v in scope["headers"] if k == PIN_HEADER.lower().encode()), None)
        pinned = None
        if value is not None:
            pinned = header_number(value, max_digits=6)
            if pinned is None or pinned >= self.engines:
                error = HTTPError(400, f"{PIN_HEADER} must be the rank of an engine, 0 to {self.engines - 1}; "
                                       f"got {value[:40].decode(errors='replace')!r}", PIN_HEADER)
                await error_response(error, scope["path"])(scope, receive, send)
                return
        with routing_scope(RoutingScope(pinned)):
            await self.app(scope, receive, send)
