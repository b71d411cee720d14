"""The simulated engine's paged KV cache and scheduler against cases computed by hand from vLLM v1's
rules: blocks of 4 tokens, a few blocks, a small token budget."""
import random

import pytest

from engine_worker.simulator.kv_cache import BlockRemoved, BlockStored, KVCacheManager
from engine_worker.simulator.sampling import Sampling
from engine_worker.simulator.scheduler import PREEMPTED, RUNNING, WAITING, Prompt, Request, Scheduler, \
    extend_block_hashes

BLOCK = 4


def request(request_id: str, prompt: list[int]) -> Request:
    return Request(request_id, Prompt(prompt, extend_block_hashes([], prompt, BLOCK)), Sampling(), random.Random(0),
                   BLOCK)


def admitted(kv: KVCacheManager, req: Request) -> int:
    """As the scheduler admits a waiting request whole: its cached prefix, then the rest. Returns the
    prefix's tokens."""
    hit = kv.computed_blocks(req)
    assert kv.allocate(req, req.num_tokens - len(hit) * BLOCK, hit)
    req.num_computed_tokens = req.num_tokens
    return len(hit) * BLOCK


def free_order(kv: KVCacheManager) -> list[int]:
    return list(kv.pool.free)


def test_a_prompt_hits_the_full_blocks_of_a_cached_prefix_and_computes_its_last_token_again():
    kv = KVCacheManager(num_blocks=16, block_size=BLOCK)
    assert admitted(kv, request("a", list(range(1, 11)))) == 0  # 10 tokens: blocks [1-4] [5-8] cached, [9 10] not
    assert admitted(kv, request("b", [*range(1, 9), 99, 100])) == 8  # shares two full blocks
    assert admitted(kv, request("c", [*range(1, 6), 77])) == 4  # shares the first block only
    # All 8 tokens cached, but the last one must be computed for its logits: only the first block is a hit.
    assert admitted(kv, request("d", list(range(1, 9)))) == 4
    assert admitted(kv, request("e", [2, *range(2, 11)])) == 0  # the first block differs: nothing chains


def test_shared_blocks_are_counted_and_stay_out_of_the_free_queue_until_every_holder_is_done():
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK)
    a, b = request("a", list(range(1, 10))), request("b", list(range(1, 10)))
    admitted(kv, a)  # blocks 1, 2 (full, cached) and 3 (one token)
    admitted(kv, b)  # hits blocks 1, 2; takes 4 for its own last token
    assert [block.ref_count for block in kv.pool.blocks[1:5]] == [2, 2, 1, 1]
    assert free_order(kv) == [5, 6, 7]
    kv.free(a)
    assert free_order(kv) == [3, 5, 6, 7]  # a's uncached last block goes to the front, reused first
    kv.free(b)
    assert free_order(kv) == [4, 3, 5, 6, 7, 2, 1]  # cached blocks at the back, b's tail first
    assert kv.usage() == 0.0


def test_eviction_takes_the_least_recently_freed_first_and_a_request_tail_before_its_head():
    kv = KVCacheManager(num_blocks=7, block_size=BLOCK, report_events=True)  # block 0 is the null block: 6 usable
    a, b = request("a", list(range(1, 9))), request("b", list(range(21, 29)))
    admitted(kv, a)  # takes blocks 1, 2
    kv.free(a)
    admitted(kv, b)  # takes blocks 3, 4
    kv.free(b)
    assert free_order(kv) == [5, 6, 2, 1, 4, 3]
    kv.take_events()
    c = request("c", list(range(41, 57)))  # 4 new blocks: 5, 6, then a's blocks, tail first
    admitted(kv, c)
    removed = [event.block_hashes[0] for event in kv.take_events() if isinstance(event, BlockRemoved)]
    assert removed == [a.block_hashes[1], a.block_hashes[0]]
    assert kv.computed_blocks(request("a2", list(range(1, 10)))) == []  # a's prefix is gone
    assert len(kv.computed_blocks(request("b2", list(range(21, 30))))) == 2  # b's is still there


def test_a_cached_prefix_waiting_in_the_free_queue_counts_against_the_free_blocks():
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK)  # 3 usable
    a = request("a", list(range(1, 9)))
    admitted(kv, a)
    kv.free(a)
    kv.allocate(request("x", [50]), 1)  # holds block 3: only a's two cached blocks are free
    b = request("b", list(range(1, 10)))
    hit = kv.computed_blocks(b)
    assert len(hit) == 2
    # Reusing them takes them out of the free queue, and the ninth token needs a third block: none is left.
    assert not kv.allocate(b, 1, hit)
    assert [block.ref_count for block in hit] == [0, 0] and len(kv.pool.free) == 2


def test_the_cache_reports_what_it_stores_with_the_parent_of_the_first_new_block():
    kv = KVCacheManager(num_blocks=16, block_size=BLOCK, report_events=True)
    a = request("a", list(range(1, 7)))
    admitted(kv, a)
    [first] = kv.take_events()
    assert first == BlockStored(a.block_hashes[:1], None, [1, 2, 3, 4], BLOCK)
    for token in (7, 8, 9):  # generated tokens fill the second block
        a.append(token)
        assert kv.allocate(a, 1)
        a.num_computed_tokens += 1
    [second] = kv.take_events()
    assert second == BlockStored(a.block_hashes[1:2], a.block_hashes[0], [5, 6, 7, 8], BLOCK)


def scheduler(num_blocks=64, max_num_seqs=8, budget=8, chunked=True, reserve_full_prompt=True) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, BLOCK), max_num_seqs, budget, chunked,
                     reserve_full_prompt=reserve_full_prompt)


def step(sched: Scheduler) -> list[tuple[str, int, int, bool]]:
    """One step: what was scheduled, and each request whose sequence is complete gets token 5."""
    chunks = sched.schedule()
    for chunk in chunks:
        if chunk.request.num_computed_tokens == chunk.request.num_tokens:
            chunk.request.append(5)
    return [(c.request.request_id, c.num_tokens, c.computed_before, c.is_decode) for c in chunks]


def test_chunked_prefill_shares_the_budget_running_first_then_waiting_in_order():
    sched = scheduler(budget=8)
    for name, start, length in (("a", 1000, 20), ("b", 2000, 6), ("c", 3000, 3)):
        sched.add(request(name, list(range(start, start + length))))
    assert step(sched) == [("a", 8, 0, False)]
    assert step(sched) == [("a", 8, 8, False)]
    assert step(sched) == [("a", 4, 16, False), ("b", 4, 0, False)]  # a's prompt ends: a token
    assert step(sched) == [("a", 1, 20, True), ("b", 2, 4, False), ("c", 3, 0, False)]
    assert step(sched) == [("a", 1, 21, True), ("b", 1, 6, True), ("c", 1, 3, True)]


def test_without_chunked_prefill_a_prompt_over_the_budget_left_waits_whole():
    sched = scheduler(budget=8, chunked=False)
    sched.add(request("a", list(range(1, 6))))
    sched.add(request("b", list(range(11, 18))))
    assert step(sched) == [("a", 5, 0, False)]  # b's 7 tokens do not fit in the 3 left
    assert step(sched) == [("a", 1, 5, True), ("b", 7, 0, False)]


@pytest.mark.parametrize("reserve_full_prompt", [True, False])
def test_a_prompt_is_admitted_only_when_all_its_blocks_are_free_as_vllms_reserve_full_isl(reserve_full_prompt):
    """6 usable blocks, a holding 3 (a decoding): b's 16-token prompt needs 4. Its first 8-token chunk would
    fit in 2, and vLLM admits that chunk only with scheduler_reserve_full_isl off (its default is on)."""
    sched = scheduler(num_blocks=7, budget=8, reserve_full_prompt=reserve_full_prompt)
    sched.add(request("a", list(range(1, 13))))
    assert step(sched) == [("a", 8, 0, False)]
    assert step(sched) == [("a", 4, 8, False)]  # a holds 3 blocks, with its first token
    sched.add(request("b", list(range(21, 37))))
    if reserve_full_prompt:
        assert step(sched) == [("a", 1, 12, True)]  # a takes a 4th block for its 13th token: 2 left
        assert list(sched.waiting) == [sched.requests["b"]]
    else:
        assert step(sched) == [("a", 1, 12, True), ("b", 7, 0, False)]


def test_no_more_than_max_num_seqs_run_and_the_rest_wait_their_turn():
    sched = scheduler(max_num_seqs=2, budget=64)
    for name in "abc":
        sched.add(request(name, [ord(name)] * 3))
    assert [entry[0] for entry in step(sched)] == ["a", "b"]
    assert [r.request_id for r in sched.waiting] == ["c"]
    assert sched.finish("a")
    assert [entry[0] for entry in step(sched)] == ["b", "c"]
    assert not sched.finish("a")  # an unknown id is ignored


def test_when_blocks_run_out_the_newest_running_request_is_preempted_to_the_front_of_the_queue():
    sched = scheduler(num_blocks=5, budget=64)  # 4 usable blocks
    a, b, c = request("a", list(range(1, 9))), request("b", list(range(11, 16))), request("c", [9])
    for req in (a, b, c):
        sched.add(req)
    assert step(sched) == [("a", 8, 0, False), ("b", 5, 0, False)]  # two blocks each: none left for c
    assert list(sched.waiting) == [c]
    # a's 9th token needs a third block: b, the newest, is preempted (its cached first block kept).
    assert step(sched) == [("a", 1, 8, True)]
    assert b.status == PREEMPTED and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert list(sched.waiting) == [b, c] and sched.running == [a]
    assert (sched.take_preempted(), sched.take_preempted()) == (1, 0)  # what the next report counts, once
    # b's 6 tokens need two blocks; one is free (its own cached first block) while a holds three.
    assert step(sched) == [("a", 1, 9, True)]
    sched.finish("a")
    # b comes back with the token it had generated, its first block a prefix-cache hit; then c.
    assert step(sched) == [("b", 2, 4, False), ("c", 1, 0, False)]
    assert b.status == RUNNING and b.num_tokens == 7
    stats = sched.kv.take_stats()
    assert (stats.requests, stats.queries, stats.hits) == (3, 14, 0)  # a, b, c when they were first admitted
    assert (stats.preempted_requests, stats.preempted_queries, stats.preempted_hits) == (1, 6, 4)


def test_the_newest_request_that_cannot_grow_preempts_itself_and_waits():
    sched = scheduler(num_blocks=3, budget=64)  # 2 usable blocks
    a, b = request("a", [1, 2]), request("b", [7, 8, 9, 10])
    sched.add(a)
    sched.add(b)
    assert step(sched) == [("a", 2, 0, False), ("b", 4, 0, False)]
    assert step(sched) == [("a", 1, 2, True)]  # b's 5th token needs a second block: none is free
    assert b.status == PREEMPTED and sched.running == [a]
    assert step(sched) == [("a", 1, 3, True)]  # b's cached block alone cannot hold its 5 tokens
    assert step(sched) == [("a", 1, 4, True)]  # a takes the free block, evicting b's
    sched.finish("a")
    assert step(sched) == [("b", 5, 0, False)]  # nothing of b was left in the cache


def test_a_waiting_request_without_blocks_counts_one_lookup_or_one_a_step_as_the_profiled_vllm_did():
    """vLLM 0.32 counts a prompt's prefix-cache lookup when the scheduler admits it; vLLM 0.26.0 counted each
    step's lookup of a waiting request that found too few free blocks too, which lowers its hit rate under
    KV pressure (a profile's `prefix_cache_lookups`)."""
    for every, (requests, queries) in ((False, (2, 20)), (True, (4, 36))):
        sched = Scheduler(KVCacheManager(5, BLOCK), 8, 64, count_every_lookup=every)  # 4 usable blocks
        sched.add(request("a", list(range(1, 13))))  # 3 blocks
        sched.add(request("c", list(range(21, 29))))  # 2 blocks: 1 is free
        assert step(sched) == [("a", 12, 0, False)]
        assert step(sched) == [("a", 1, 12, True)]  # a's 13th token takes the last block; c waits again
        sched.finish("a")
        assert step(sched) == [("c", 8, 0, False)]
        stats = sched.kv.take_stats()
        assert (stats.requests, stats.queries, stats.hits) == (requests, queries, 0)
