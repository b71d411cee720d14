"""Which engine each request goes to, decided in each frontend with no shared state (docs/fleet.md).

1. `X-data-parallel-rank: i` pins the request to engine i (as vLLM's API server accepts).
2. Out of balance (the load scores of the most and least loaded engines differ by more than
   balance_abs_threshold and by more than balance_rel_threshold times): the least loaded.
3. Queueing: when the engine chosen below has requests waiting in its scheduler (its last heartbeat)
   while another has none, the least loaded of those with none. A request queued behind a full
   engine waits for a running one to finish, which costs far more than recomputing a prefix.
4. The engine this frontend routed the longest run of the prompt's leading blocks to, when that run
   covers at least min_match_ratio of the prompt: it likely still holds them in its prefix cache.
5. A prompt no engine holds goes to its home: the engine the first min_match_ratio of its blocks
   hash to (rendezvous hashing over the engines that are up). Every frontend computes the same home,
   so prompts sharing a prefix meet on one engine even when different frontends route them. But
   only while the home is within one queued request (HOME_SLACK) of the least loaded: a burst of
   new prompts arrives faster than heartbeats, and hashing alone piles them up unevenly (each
   frontend counts its own sends, so a burst is split nearly evenly instead).
6. A prompt shorter than one block: the least loaded.
Block hashes chain as vLLM's do (each hashes its parent's hash and its own token ids), so a block
stands for the whole prefix up to it. What was routed where is remembered per engine, bounded,
forgetting the least recently routed blocks first, and all of it when the engine restarts.
"""
import contextlib
import contextvars
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

from common.config import RouterConfig
from frontend.http import HTTPError

PIN_HEADER = "X-data-parallel-rank"
HOME_SLACK = 4.0  # one waiting request in vLLM's load score


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """One chained hash per full block of the prompt. Python hashes ints and tuples of ints the same
    in every process, so all frontends agree."""
    hashes, parent = [], 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, *token_ids[start:start + block_size]))
        hashes.append(parent)
    return hashes


def rendezvous(key: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{key}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    def __init__(self, config: RouterConfig, engines: int):
        self.config = config
        self.cached: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(engines)]

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
            rank, reason = self.holder(blocks, loads) or self.home(blocks, loads, least)
            rank, reason = self.unqueued(rank, reason, loads, waiting or {})
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
            cached = self.cached[rank]
            run = 0
            while run < len(blocks) and blocks[run] in cached:
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
        cached = self.cached[rank]
        for block in blocks:
            cached[block] = None
            cached.move_to_end(block)
        while len(cached) > self.config.blocks_per_engine:
            cached.popitem(last=False)

    def forget(self, rank: int) -> None:
        """The engine restarted or was lost: its prefix cache is gone."""
        self.cached[rank].clear()


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
            pinned = int(value) if value.strip().isdigit() else -1
            if not 0 <= pinned < self.engines:
                error = HTTPError(400, f"{PIN_HEADER} must be the rank of an engine, 0 to {self.engines - 1}; "
                                       f"got {value.decode(errors='replace')!r}", PIN_HEADER)
                await error.response()(scope, receive, send)
                return
        with routing_scope(RoutingScope(pinned)):
            await self.app(scope, receive, send)
