"""The simulated engine's scheduler: what one step computes, decided as vLLM v1's Scheduler decides it
under its first-come-first-served policy, or under `scheduling_policy: priority` (below).

Each step has a budget of `max_num_batched_tokens`. Running requests come first, in the order they
started: each gets the tokens it still needs (one to decode, or the rest of its prompt) within the
budget, and its KV blocks; when blocks run out, the newest running request is preempted (its blocks
freed, back to the front of the waiting queue, to be computed again from its prompt and the tokens it
had generated), until the request fits or was itself the one preempted. Then, unless a request was
preempted in this step, waiting requests in order, while fewer than `max_num_seqs` run: each looks up
its prompt's cached prefix, and is admitted with as much of the rest as the budget leaves (chunked
prefill; without it a prompt that does not fit whole waits) if the blocks of its whole sequence can be had
(vLLM's scheduler_reserve_full_isl; else those of the chunk).
Under the priority policy the waiting queue is ordered by (priority, arrival), a preempted request
goes back to its place in that order, and the request preempted is the running one of the worst
(priority, arrival) not yet given tokens in the step, as vLLM's PriorityRequestQueue and its preemption
do (vLLM may also take back one given tokens earlier in the step).
"""
import itertools
import random
from collections import deque
from typing import NamedTuple

from engine_worker.simulator.kv_cache import KVCacheManager

WAITING, RUNNING, PREEMPTED = "waiting", "running", "preempted"


def extend_block_hashes(hashes: list[int], token_ids: list[int], block_size: int) -> list[int]:
    """Append to `hashes` the hash of each full block of `token_ids` not hashed yet: each covers its
    parent's hash and its own token ids, as vLLM chains them."""
    while (len(hashes) + 1) * block_size <= len(token_ids):
        start = len(hashes) * block_size
        hashes.append(hash((hashes[-1] if hashes else 0, tuple(token_ids[start:start + block_size]))))
    return hashes


class Prompt(NamedTuple):
    """A prompt's token ids and its full blocks' hashes (computed at admission, off the step thread), and
    its request's priority (vLLM's: lower first)."""

    token_ids: list[int]
    block_hashes: list[int]
    priority: int = 0


class Request:
    def __init__(self, request_id: str, prompt: Prompt, sampling, rng: random.Random, block_size: int):
        self.request_id = request_id
        self.token_ids = prompt.token_ids  # the prompt, then each generated token
        self.block_hashes = prompt.block_hashes
        self.num_prompt_tokens = len(prompt.token_ids)
        self.sampling = sampling
        self.rng = rng
        self.block_size = block_size
        self.num_computed_tokens = 0
        self.num_preemptions = 0
        self.num_cached_tokens = -1  # its prompt tokens found in the prefix cache when first scheduled (vLLM's)
        self.status = WAITING
        self.priority = prompt.priority
        self.arrival = 0  # the order the scheduler took it in

    @property
    def rank(self) -> tuple[int, int]:
        """Its place under the priority policy: the lowest is scheduled first and preempted last."""
        return self.priority, self.arrival

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        extend_block_hashes(self.block_hashes, self.token_ids, self.block_size)


class Chunk(NamedTuple):
    """One request's share of a step: `num_tokens` computed after the `computed_before` already in KV.
    A decode generates a token from a complete prompt; any other chunk computes part of a prompt (or a
    preempted request's tokens again)."""

    request: Request
    num_tokens: int
    computed_before: int
    is_decode: bool


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True, by_priority: bool = False, count_every_lookup: bool = False,
                 reserve_full_prompt: bool = True):
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.by_priority = by_priority
        # vLLM 0.26.0 counts a waiting request's lookup each step it is looked up, admitted or not
        self.count_every_lookup = count_every_lookup
        # vLLM's scheduler_reserve_full_isl: a waiting request is admitted only if its whole sequence fits
        self.reserve_full_prompt = reserve_full_prompt
        self.arrivals = itertools.count()
        self.preempted = 0  # requests preempted since take_preempted last read it
        self.finished: list[Request] = []  # ended, their blocks not yet given back (finish's keep_blocks)

    def take_preempted(self) -> int:
        preempted, self.preempted = self.preempted, 0
        return preempted

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        request.arrival = next(self.arrivals)
        self.wait(request, at_front=False)

    def wait(self, request: Request, at_front: bool) -> None:
        """Into the waiting queue: at its place by rank under the priority policy, else at the back (a new
        request) or the front (a preempted one)."""
        if self.by_priority:
            self.waiting.insert(next((i for i, r in enumerate(self.waiting) if r.rank > request.rank),
                                     len(self.waiting)), request)
        elif at_front:
            self.waiting.appendleft(request)
        else:
            self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> list[Chunk]:
        budget = self.max_num_batched_tokens
        chunks: list[Chunk] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            fits, preempted_some = self.make_room(request, num_new)
            preempted |= preempted_some
            if not fits:
                break
            chunks.append(self.compute(request, num_new))
            budget -= num_new
            index += 1
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            hit = self.kv.computed_blocks(request)
            hit_tokens = len(hit) * self.kv.block_size
            if self.count_every_lookup:
                self.kv.record_lookup(request, hit_tokens)
            num_new = request.num_tokens - hit_tokens
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self.kv.allocate(request, num_new, hit, whole=self.reserve_full_prompt):
                break
            if not self.count_every_lookup:
                self.kv.record_lookup(request, hit_tokens)
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = hit_tokens
            self.waiting.popleft()
            self.running.append(request)
            request.status = RUNNING
            request.num_computed_tokens = hit_tokens
            chunks.append(self.compute(request, num_new))
            budget -= num_new
        return chunks

    def make_room(self, request: Request, num_new: int) -> tuple[bool, bool]:
        """Blocks for a running request's next tokens, preempting the newest running requests until
        they fit. Returns (whether it fits, whether any request was preempted)."""
        preempted = False
        while not self.kv.allocate(request, num_new):
            # Under the priority policy, the worst of those not yet given tokens in this step.
            unscheduled = self.running[self.running.index(request):]
            victim = max(unscheduled, key=lambda r: r.rank) if self.by_priority else self.running[-1]
            self.running.remove(victim)
            self.preempt(victim)
            preempted = True
            if victim is request:
                return False, True
        return True, preempted

    @staticmethod
    def compute(request: Request, num_new: int) -> Chunk:
        before = request.num_computed_tokens
        chunk = Chunk(request, num_new, before, num_new == 1 and request.num_output_tokens > 0
                      and before == request.num_tokens - 1)
        request.num_computed_tokens += num_new
        return chunk

    def preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.preempted += 1
        self.wait(request, at_front=True)

    def finish(self, request_id: str, keep_blocks: bool = False) -> bool:
        """Drop a request, finished or aborted, and free its blocks, or with `keep_blocks` hold them until
        free_finished (async scheduling); False for an unknown id."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        if request.status == RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        if keep_blocks:
            self.finished.append(request)
        else:
            self.kv.free(request)
        return True

    def free_finished(self) -> None:
        for request in self.finished:
            self.kv.free(request)
        self.finished.clear()
