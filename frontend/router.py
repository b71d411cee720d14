"""Which engine each request goes to, decided in each frontend with no shared state (docs/fleet.md).

Policy "prefix" (router.policy), after a pin:
1. `X-data-parallel-rank: i` pins the request to engine i (as vLLM's API server accepts).
2. The engine holding the longest run of the prompt's leading blocks, when that run covers at least
   min_match_ratio of the prompt. Held means the engine reported those blocks in its prefix cache
   (placement "exact", vLLM's KV-cache events via engine_worker/cache_events.py) or this frontend
   sent them there (within SENT_MEMORY_S for a reporting engine; with placement "approximate", until
   forgotten: bounded, least recently sent first). It keeps the prompt while its load is within
   affinity_window_tokens of the least loaded engine's or affinity_window_ratio times it (load_score
   "tokens": both loads counting the prompt's own prefill there, so what the holder caches counts for
   it; the ratio keeps prefixes in place when every queue is many windows long), or, with load_score
   "requests", unless load is out of balance (the most and least loaded engines differ by more than
   balance_abs_threshold and by more than balance_rel_threshold times, SGLang's cache-aware rule,
   which then sends every prompt to the least loaded). Sending a held prefix elsewhere whenever its
   engine is a little busier spreads every prefix over every engine (measured on 4×H100). In that
   rule the holder's load counts each of this frontend's unacknowledged sends of the same prefix there
   once for every frontend: the frontends route a burst of one prefix alike within one engine step,
   each seeing only its own sends, so each may fill only its share of the window.
3. A prompt no engine holds goes to its home: the engine the first min_match_ratio of its blocks hash
   to (rendezvous hashing over the engines that are up). Every frontend computes the same home, so
   prompts sharing a prefix meet on one engine even when different frontends route them. But only
   while the home's load is within one such request of the least loaded (the prompt's prefill, or 4 in
   vLLM's score): a burst of new prompts must not pile up unevenly by hash.
4. Queueing, for a prompt no engine holds: when the engine step 3 chooses has requests waiting in its
   scheduler while another has none, the least loaded of those with none. A request queued behind a
   full engine waits for a running one to finish; a new prompt loses no cache.
5. A prompt shorter than one block: the least loaded.
Policy "load" is step 5 for every prompt. Loads come from each engine's LoadView
(frontend/load_view.py); ties go by the prompt's hash (rendezvous again), never by rank, so a burst
of equal scores spreads over the engines. Policies "round_robin" and "vllm_dp" are the baselines of
frontend/balancers.py. Block hashes chain as vLLM's do (common/blocks.py). All an engine held is
forgotten when it restarts.
"""
import contextlib
import contextvars
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from common.blocks import block_hashes
from common.config import RouterConfig
from frontend.balancers import RoundRobin, VllmDataParallel
from frontend.cache_record import CacheRecord
from frontend.error_shapes import error_response
from frontend.http import HTTPError, header_number
from frontend.load_view import LoadView

PIN_HEADER = "X-data-parallel-rank"
WAITING_REQUEST = 4  # one waiting request in vLLM's load score
# With an engine reporting its prefix cache, what this frontend sent there counts for this long: until
# the engine's report of those blocks can have come (after their prefill, which a queue delays).
SENT_MEMORY_S = 10.0


def rendezvous(key: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{key}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Engine(Protocol):
    """What the router reads of an engine (an EngineLink)."""
    load_view: LoadView
    cache_record: CacheRecord


class Route(NamedTuple):
    rank: int
    reason: str  # pinned, prefix, load, round_robin or vllm_dp: the `reason` of the routed metric
    prefill_tokens: int  # of the prompt, those the engine is expected to compute (not in its cache)
    blocks: Sequence[int] = ()  # the prompt's block hashes, when routed by prefix


class Router:
    def __init__(self, config: RouterConfig, engines: int, frontend_index: int = 0, frontends: int = 1):
        self.config = config
        self.frontends = frontends  # on this host; the engines' reports count those of every host
        # What this frontend sent to each engine: block hash -> when, least recently sent first.
        self.sent: list[OrderedDict[int, float]] = [OrderedDict() for _ in range(engines)]
        self.balancer = {"round_robin": lambda: RoundRobin(frontend_index),
                         "vllm_dp": lambda: VllmDataParallel(engines, frontend_index, frontends)
                         }.get(config.policy, lambda: None)()

    def pick(self, token_ids: list[int], engines: dict[int, Engine], image_keys: dict[int, int] | None = None,
             bounded: bool = False) -> Route:
        """The engine for a prompt, among `engines` (those up that may take it); `image_keys`: its
        images' content hashes at their placeholders, which the blocks holding them hash too; `bounded`:
        its priority class has a share of the engines' slots, so the requests they hold back count."""
        if self.balancer is not None:
            return Route(self.balancer.pick(engines), self.config.policy, len(token_ids))
        key = hash(tuple(token_ids))
        blocks = (block_hashes(token_ids, self.config.block_size, extra_keys=image_keys)
                  if self.config.policy == "prefix" else [])
        runs = {rank: self.run(rank, engine, blocks) for rank, engine in engines.items()}
        prefill = {rank: len(token_ids) - run * self.config.block_size for rank, run in runs.items()}
        loads = {rank: self.load(engines[rank].load_view, prefill[rank], bounded) for rank in engines}
        least = lowest(loads, key)
        if not blocks:
            return Route(least, "load", prefill[least])
        holder = self.holder(runs, loads, key, len(blocks))
        if holder is not None:
            loads[holder] += self.others_alike(engines[holder].load_view, blocks, runs[holder])
            rank, reason = (holder, "prefix") if self.keeps_prefix(holder, least, loads) else (least, "load")
        elif self.config.load_score == "requests" and self.out_of_balance(loads):
            rank, reason = least, "load"
        else:
            rank, reason = self.unqueued(*self.home(blocks, loads, least, prefill), loads, engines, key)
        self.remember(rank, blocks)
        return Route(rank, reason, prefill[rank], blocks)

    def load(self, view: LoadView, prefill_tokens: int, bounded: bool = False) -> float:
        if self.config.load_score == "requests":
            return view.requests(bounded)
        return view.tokens(bounded) + prefill_tokens

    def others_alike(self, view: LoadView, blocks: list[int], run: int) -> float:
        """What the other frontends are taken to have sent the holder of the prompt's first `run` blocks that
        it has not yet acknowledged: as much as this frontend sent it of prompts beginning with them, each.
        Every frontend routes a burst of one prefix to its holder alike and sees only its own sends until
        the engine's next report; counted so, the frontends together keep the holder within one window
        (or balance threshold) of the least loaded, however many there are."""
        alike = view.unacknowledged_sharing(blocks, run)
        if not alike:
            return 0.0
        load = WAITING_REQUEST * len(alike) if self.config.load_score == "requests" else sum(s.load for s in alike)
        return (max(self.frontends, view.frontends) - 1) * load

    def keeps_prefix(self, holder: int, least: int, loads: dict[int, float]) -> bool:
        """Whether the engine holding the prompt's prefix takes it: while its load is within the window
        of the least loaded's (tokens), or while load is in balance (requests, SGLang's rule)."""
        if self.config.load_score == "requests":
            return not self.out_of_balance(loads)
        return (loads[holder] - loads[least] <= self.config.affinity_window_tokens
                or loads[holder] <= self.config.affinity_window_ratio * loads[least])

    def out_of_balance(self, loads: dict[int, float]) -> bool:
        most, least = max(loads.values()), min(loads.values())
        return most - least > self.config.balance_abs_threshold and most > least * self.config.balance_rel_threshold

    def unqueued(self, rank: int, reason: str, loads: dict[int, float], engines: dict[int, Engine],
                 key: int) -> tuple[int, str]:
        """`rank`, unless it has a queue while another engine has none: then the least loaded of those."""
        free = {other: loads[other] for other in loads if not engines[other].load_view.waiting}
        if not engines[rank].load_view.waiting or not free:
            return rank, reason
        return lowest(free, key), "load"

    def run(self, rank: int, engine: Engine, blocks: list[int]) -> int:
        """How many of the prompt's leading blocks the engine holds, as reported or as sent."""
        self.expire(rank, engine)
        sent, held = self.sent[rank], engine.cache_record
        run = 0
        while run < len(blocks) and (blocks[run] in held or blocks[run] in sent):
            run += 1
        return run

    def holder(self, runs: dict[int, int], loads: dict[int, float], key: int, blocks: int) -> int | None:
        """The engine holding the longest run of leading blocks, if it covers enough of the prompt; of
        equal runs, the least loaded."""
        longest = max(runs.values())
        if not longest or longest < self.config.min_match_ratio * blocks:
            return None
        return lowest({rank: loads[rank] for rank, run in runs.items() if run == longest}, key)

    def home(self, blocks: list[int], loads: dict[int, float], least: int,
             prefill: dict[int, int]) -> tuple[int, str]:
        key = blocks[max(math.floor(self.config.min_match_ratio * len(blocks)), 1) - 1]
        home = max(loads, key=lambda rank: rendezvous(key, rank))
        slack = WAITING_REQUEST if self.config.load_score == "requests" else prefill[home]
        if loads[home] - loads[least] > slack:
            return least, "load"
        return home, "prefix"

    def remember(self, rank: int, blocks: list[int]) -> None:
        sent, now = self.sent[rank], time.monotonic()
        for block in blocks:
            sent[block] = now
            sent.move_to_end(block)
        while len(sent) > self.config.blocks_per_engine:
            sent.popitem(last=False)

    def expire(self, rank: int, engine: Engine) -> None:
        """Drop sends older than SENT_MEMORY_S from an engine that reports its cache."""
        sent, cutoff = self.sent[rank], time.monotonic() - SENT_MEMORY_S
        while engine.cache_record.reporting and sent and next(iter(sent.values())) < cutoff:
            sent.popitem(last=False)

    def forget(self, rank: int) -> None:
        """The engine restarted or was lost: what was sent there is gone."""
        self.sent[rank].clear()


def lowest(loads: dict[int, float], key: int) -> int:
    """The engine of the lowest load; of equal ones, the one the key's rendezvous hash ranks first."""
    low = min(loads.values())
    return max((rank for rank, load in loads.items() if load == low), key=lambda rank: rendezvous(key, rank))


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
