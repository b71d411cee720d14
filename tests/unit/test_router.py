"""The routing policy on its own (frontend/router.py), over real LoadViews and CacheRecords fed with
the engines' messages, and the fleet's configuration: which engines a frontend talks to, at which
addresses, and which GPUs each local engine takes."""
import random
from types import SimpleNamespace

import msgspec
import pytest

from common.blocks import block_hashes
from common.config import InferenceConfig, RemoteEngine, RouterConfig, ServerConfig, gpus_of
from common.messages import LoadReport
from frontend.cache_record import CacheRecord
from frontend.load_view import DECODE_TOKENS, KV_TOKENS, LoadView
from frontend.router import Router

BLOCK = 16
FRONTEND = "host-0~a"


def prompt(prefix: int, length: int, suffix: int = 0) -> list[int]:
    """`length` token ids that share their first part with every prompt of the same `prefix`."""
    return [prefix * 1000 + i for i in range(length - 8)] + [suffix * 100 + i for i in range(8)]


def router(engines: int = 2, **config) -> Router:
    return Router(RouterConfig(block_size=BLOCK, **config), engines)


def fleet(count: int = 2) -> dict:
    """Engines as the router reads them: a load view and a record of the reported prefix cache each."""
    return {rank: SimpleNamespace(load_view=LoadView(), cache_record=CacheRecord(rank, 1 << 20)) for rank in range(count)}


def report(engine, waiting: int = 0, running: int = 0, prefill: int = 0, kv: int = 0,
           taken: dict | None = None) -> None:
    """The engine's next LoadReport reaches this frontend."""
    seq = engine.load_view.report.seq + 1
    engine.load_view.on_report(LoadReport("e", seq, waiting, running, prefill, kv, 0, taken or {}), FRONTEND)


def send(policy: Router, engines: dict, token_ids: list[int]) -> tuple[int, str]:
    """Route a prompt and send it, as the engine client does: it counts in its engine's load."""
    route = policy.pick(token_ids, engines)
    engines[route.rank].load_view.sent_request(route.prefill_tokens, len(token_ids), route.blocks)
    return route.rank, route.reason


def test_block_hashes_chain_and_skip_the_partial_block():
    a, b = block_hashes(list(range(40)), BLOCK), block_hashes([99] + list(range(1, 40)), BLOCK)
    assert len(a) == 2  # 40 tokens: two full blocks
    assert a[0] != b[0] and a[1] != b[1]  # the second block is the same tokens, after another parent
    assert block_hashes(list(range(40)), BLOCK) == a


@pytest.mark.parametrize("load_score", ["tokens", "requests"])
def test_prompts_sharing_a_prefix_go_where_the_first_went(load_score):
    policy, engines = router(load_score=load_score), fleet()
    first, reason = send(policy, engines, prompt(1, 200, suffix=1))
    assert reason == "prefix"
    for suffix in range(2, 8):  # each send makes the first engine a little busier; the cached prefix wins
        assert send(policy, engines, prompt(1, 200, suffix=suffix)) == (first, "prefix")


def test_a_new_prefix_has_the_same_home_in_every_frontend():
    """Two routers with no shared state place the same new prefix on the same engine."""
    homes = {(prefix, router().pick(prompt(prefix, 200), fleet()).rank) for prefix in range(20)}
    assert homes == {(prefix, router().pick(prompt(prefix, 200, suffix=5), fleet()).rank) for prefix in range(20)}
    assert {rank for _, rank in homes} == {0, 1}  # and different prefixes spread over the engines


def test_cache_affinity_holds_while_load_is_uneven_within_the_window():
    """The holder of a prefix keeps it while its load, counting the prompt's own prefill there, is
    within affinity_window_tokens of the least loaded engine's; past the window the prompt moves."""
    policy, engines = router(affinity_window_tokens=1000), fleet()
    first, _ = send(policy, engines, prompt(1, 200))
    other = 1 - first
    # Acknowledged: the first request is in the engine's figures now, running with 200 tokens of KV.
    running = DECODE_TOKENS + KV_TOKENS * 200
    # The holder would compute 8 tokens of the next prompt, the other engine all 200: the holder keeps
    # it while its queue is at most the window + 192 tokens longer.
    edge = 1000 + 200 - 8 - running
    report(engines[first], running=1, prefill=int(edge) - 1, kv=200, taken={FRONTEND: 1})
    assert policy.pick(prompt(1, 200, suffix=2), engines)[:2] == (first, "prefix")
    report(engines[first], running=1, prefill=int(edge) + 2, kv=200)
    assert policy.pick(prompt(1, 200, suffix=3), engines)[:2] == (other, "load")


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_under_saturation_the_holder_keeps_its_prefix_within_the_ratio(ratio):
    """With affinity_window_ratio, a holder queueing far more than one window above the least loaded still
    keeps the prefix while its load is within that many times the least loaded's; past it the prompt moves.
    Without it (0), the window alone decides."""
    policy, engines = router(affinity_window_tokens=1000, affinity_window_ratio=ratio), fleet()
    first, _ = send(policy, engines, prompt(1, 200))
    other = 1 - first
    report(engines[other], waiting=40, prefill=80_000)
    report(engines[first], waiting=50, prefill=100_000, taken={FRONTEND: 1})  # 20,000 above: 1.25x
    assert policy.pick(prompt(1, 200, suffix=2), engines)[:2] == ((first, "prefix") if ratio else (other, "load"))
    report(engines[first], waiting=60, prefill=125_000)  # 1.56x
    assert policy.pick(prompt(1, 200, suffix=3), engines).rank == other


def test_load_out_of_balance_overrides_the_prefix_under_the_requests_score():
    policy, engines = router(load_score="requests", balance_abs_threshold=32, balance_rel_threshold=1.5), fleet()
    first, _ = send(policy, engines, prompt(1, 200))
    other = 1 - first
    report(engines[first], waiting=5, running=40, taken={FRONTEND: 1})  # 60 against 40: within both
    report(engines[other], waiting=0, running=40)
    assert policy.pick(prompt(1, 200, suffix=2), engines)[:2] == (first, "prefix")
    report(engines[first], waiting=10, running=100)  # 140 against 40
    assert send(policy, engines, prompt(1, 200, suffix=3)) == (other, "load")
    # Both engines hold the prefix now: the less loaded of them gets the next one.
    report(engines[first], running=12)
    report(engines[other], running=14, taken={FRONTEND: 1})
    assert policy.pick(prompt(1, 200, suffix=4), engines)[:2] == (first, "prefix")


@pytest.mark.parametrize("load_score", ["tokens", "requests"])
def test_a_burst_of_new_prompts_from_several_frontends_splits_evenly(load_score):
    """512 random prompts at once from 4 frontends, faster than any report: each frontend counts its own
    sends until acknowledged, so hashing new prompts home cannot pile them up."""
    frontends = [(router(load_score=load_score), fleet()) for _ in range(4)]
    sent = {0: 0, 1: 0}
    for i in range(128):
        for index, (policy, engines) in enumerate(frontends):
            rank, _ = send(policy, engines, prompt(10_000 + 4 * i + index, 128))
            sent[rank] += 1
    assert abs(sent[0] - sent[1]) <= 8  # at most one request over per frontend and engine


def test_a_burst_of_equal_scores_spreads_by_the_prompts_hash_and_not_by_rank():
    """Many frontends each sending one new prompt to 8 idle engines: every load is equal, so each pick
    is a tie. Ties go by the prompt's hash, so the prompts spread over every engine, and the engine a
    prompt gets does not depend on the order the engines are listed in."""
    chosen = []
    for i in range(800):
        token_ids = [random.Random(i).randrange(50_000) for _ in range(10)]  # shorter than a block: by load
        engines = fleet(8)
        reordered = dict(sorted(engines.items(), key=lambda item: -item[0]))
        rank = router(8, policy="load").pick(token_ids, engines).rank
        assert router(8, policy="load").pick(token_ids, reordered).rank == rank
        chosen.append(rank)
    assert all(60 <= chosen.count(rank) <= 140 for rank in range(8)), [chosen.count(rank) for rank in range(8)]


def test_a_burst_of_one_prompt_does_not_collapse_onto_one_engine():
    """256 copies of one prompt from one frontend, faster than any report: each send counts in its
    engine's load, so once the holder is a window ahead the copies go to the other engines too."""
    policy, engines = router(4, affinity_window_tokens=2048), fleet(4)
    ranks = [send(policy, engines, prompt(7, 1024))[0] for _ in range(256)]
    assert len(set(ranks)) == 4
    assert max(ranks.count(rank) for rank in range(4)) < 256 / 2


def frontends(count: int, engines: int, on_host: int | None = None, **config) -> list[tuple[Router, dict]]:
    """`count` frontends, each with its own router and its own view of the same `engines` engines;
    `on_host`: the frontends each knows of from its host's configuration (all of them by default)."""
    return [(Router(RouterConfig(block_size=BLOCK, **config), engines, index, on_host or count), fleet(engines))
            for index in range(count)]


@pytest.mark.parametrize("load_score", ["tokens", "requests"])
def test_a_burst_of_one_prefix_from_several_frontends_spreads_once_past_one_window(load_score):
    """256 prompts sharing one 2,048-token prefix from 8 frontends at once, faster than any report: each
    frontend sees only its own sends, and all route the burst alike. Each counts its unacknowledged sends
    of the prefix once for every frontend, so the holder takes about one copy from each, not a window's
    worth from each, and the burst spreads over the 8 engines (the routing suite's (a))."""
    fleets = frontends(8, 8, load_score=load_score)
    prefix = prompt(3, 2048)
    counts = [0] * 8
    for copy in range(32):
        for index, (policy, engines) in enumerate(fleets):
            rank, _ = send(policy, engines, prefix + [900_000 + 64 * (8 * copy + index) + i for i in range(64)])
            counts[rank] += 1
    assert max(counts) <= 1.5 * 256 / 8, counts


def test_the_engines_count_of_frontends_counts_those_of_other_hosts():
    """Frontends on four hosts, 2 each: a frontend's configuration knows of its host's 2, the engines'
    reports of all 8; with the reports the holder takes one copy of a burst from each, as with 8 on one."""
    def first_copies(reported: int) -> list[int]:
        fleets = frontends(8, 8, on_host=2)
        for _, engines in fleets:
            for engine in engines.values():
                engine.load_view.on_report(LoadReport("e", 1, 0, 0, 0, 0, 0, {}, frontends=reported), FRONTEND)
        prefix = prompt(3, 2048)
        return [send(policy, engines, prefix + [900_000 + 64 * copy + i for i in range(64)])[0]
                for copy in range(2) for policy, engines in fleets]

    ranks = first_copies(reported=8)
    home = ranks[0]
    assert ranks[:8] == [home] * 8  # the first copy of each goes to the prefix's home: none holds it yet
    assert home not in ranks[8:]  # the second goes elsewhere: the holder has a copy from each frontend
    assert first_copies(reported=0)[8:].count(home) == 8  # each believing 2 sent it one, it keeps them


def test_a_steady_load_of_one_prefix_keeps_its_engine_from_every_frontend():
    """8 frontends each send one prompt of a shared prefix every engine step, and each step's report
    acknowledges them: no frontend has a send of the prefix unacknowledged when it routes the next, so
    the prefix stays on its engine, however many frontends send it."""
    fleets = frontends(8, 4)
    ids = [f"host-{index}~a" for index in range(8)]
    prefix = prompt(5, 1024)
    ranks = set()
    for step in range(20):
        for index, (policy, engines) in enumerate(fleets):
            rank, _ = send(policy, engines, prefix + [900_000 + 128 * (8 * step + index) + i for i in range(128)])
            ranks.add(rank)
        for index, (_, engines) in enumerate(fleets):  # 8 running, the prefix cached: a steady engine
            engines[rank].load_view.on_report(LoadReport("e", step + 1, 0, 8, 0, 8 * 1152, 0,
                                                         {frontend: step + 1 for frontend in ids},
                                                         frontends=8), ids[index])
    assert len(ranks) == 1


def test_prefill_only_load_counts_in_tokens():
    """One engine prefills a 32,000-token prompt that asks for one output token; the other decodes ten
    chat requests. vLLM's request count sees 1 running against 10; the token score sees the prefill."""
    tokens, requests, engines = router(), router(load_score="requests"), fleet()
    report(engines[0], running=1, prefill=32_000)
    report(engines[1], running=10, kv=10 * 600)
    chat = prompt(3, 200)
    assert tokens.pick(chat, engines).rank == 1
    assert requests.pick(chat, engines).rank == 0


def test_a_new_prompt_avoids_an_engine_with_a_queue_but_a_held_prefix_stays():
    """Saturated engines: a new prompt's home has requests waiting, the other engine has none; a queued
    request would wait for a whole generation to end, so it goes where it starts at once. A prompt
    whose prefix an engine holds stays there while its load is within the window."""
    policy, engines = router(affinity_window_tokens=2048), fleet()
    home = router().pick(prompt(1, 200), fleet()).rank
    other = 1 - home
    report(engines[home], waiting=6, running=256, prefill=6 * 200, kv=256 * 600)
    report(engines[other], running=256, kv=256 * 600)
    assert send(policy, engines, prompt(1, 200)) == (other, "load")
    report(engines[other], waiting=6, running=256, prefill=6 * 200, kv=256 * 600, taken={FRONTEND: 1})
    report(engines[home], running=256, kv=256 * 600)
    assert policy.pick(prompt(1, 200, suffix=2), engines)[:2] == (other, "prefix")


def test_short_prompts_and_the_load_policy_go_to_the_least_loaded():
    engines = fleet()
    report(engines[0], running=5, kv=5000)
    report(engines[1], running=1, kv=1000)
    assert router().pick(list(range(BLOCK - 1)), engines)[:2] == (1, "load")
    load_only = router(policy="load")
    assert load_only.pick(prompt(1, 200), engines)[:2] == (1, "load")
    assert load_only.pick(prompt(1, 200), engines)[:2] == (1, "load")  # it remembers no prefix


def test_a_small_shared_part_is_not_a_prefix_match():
    policy = router(min_match_ratio=0.5)
    policy.pick([7] * 32 + list(range(1000, 1200)), fleet())
    # Two blocks in common out of 14: below the ratio, so the holder of those two blocks is not chosen
    # for that reason; the new prompt goes to its own home, as for a router that never saw the first.
    other = [7] * 32 + list(range(5000, 5200))
    assert policy.pick(other, fleet())[:2] == router().pick(other, fleet())[:2]


def test_remembered_blocks_are_bounded_least_recent_first():
    policy, engines = router(1, blocks_per_engine=20), fleet(1)  # one engine up: everything lands there
    send(policy, engines, prompt(1, 160))  # 10 blocks
    send(policy, engines, prompt(2, 160))  # 10 more: full
    send(policy, engines, prompt(1, 160))  # touches prefix 1 again
    send(policy, engines, prompt(3, 160))  # evicts prefix 2, the least recently routed
    sent = policy.sent[0]
    assert len(sent) == 20
    assert all(block in sent for block in block_hashes(prompt(1, 160), BLOCK))
    assert not any(block in sent for block in block_hashes(prompt(2, 160), BLOCK))


def test_an_engine_down_is_never_chosen_and_a_restarted_one_is_forgotten():
    policy, engines = router(), fleet()
    first, _ = send(policy, engines, prompt(1, 200))
    other = 1 - first
    # Only the other engine is up: only it is offered.
    assert send(policy, {other: engines[other]}, prompt(1, 200, suffix=2)) == (other, "prefix")
    policy.forget(other)
    assert not policy.sent[other]
    assert policy.pick(prompt(1, 200, suffix=3), fleet())[:2] == (first, "prefix")


def test_engine_addresses_local_then_remote():
    server = ServerConfig(run_dir="/tmp/r", engines=[RemoteEngine("tcp://10.0.0.2:5555", "tcp://10.0.0.2:5556")])
    assert server.pool_addresses([("m", 2)]) == {"m": [
        ("ipc:///tmp/r/engine-requests", "ipc:///tmp/r/engine-outputs"),
        ("ipc:///tmp/r/engine-1-requests", "ipc:///tmp/r/engine-1-outputs"),
        ("tcp://10.0.0.2:5555", "tcp://10.0.0.2:5556"),
    ]}
    tcp = msgspec.convert({"engine": {"request_address": "tcp://127.0.0.1:6000",
                                      "output_address": "tcp://127.0.0.1:6100"}, "local_engines": False}, ServerConfig)
    assert tcp.local_request_address(3) == "tcp://127.0.0.1:6003"
    assert tcp.local_output_address(3) == "tcp://127.0.0.1:6103"
    assert tcp.pool_addresses([("m", 2)]) == {}  # a frontend-only host


def test_gpu_assignment():
    assert gpus_of(0, tp=1, dp=1, visible="", all_gpus=8) == ""  # one engine: as before
    assert gpus_of(0, tp=2, dp=1, visible="2,3", all_gpus=8) == "2,3"
    assert [gpus_of(rank, tp=1, dp=4, visible="", all_gpus=4) for rank in range(4)] == ["0", "1", "2", "3"]
    assert [gpus_of(rank, tp=2, dp=2, visible="4,5,6,7", all_gpus=8) for rank in range(2)] == ["4,5", "6,7"]
    assert gpus_of(1, tp=2, dp=2, visible="", all_gpus=None) == ""  # a CPU host
    with pytest.raises(SystemExit, match="engine 1 needs GPUs 2..3"):
        gpus_of(1, tp=2, dp=2, visible="0,1,2", all_gpus=8)


def test_data_parallel_size_is_ours_not_vllms():
    inference = InferenceConfig(engine_args={"data_parallel_size": 2, "tensor_parallel_size": 2, "max_num_seqs": 8})
    assert inference.data_parallel_size == 2
    assert inference.vllm_engine_args() == {"tensor_parallel_size": 2, "max_num_seqs": 8}
    assert inference.gpus_of(1, all_gpus=4) == "2,3"


@pytest.mark.parametrize("load_score", ["tokens", "requests"])
def test_requests_an_engine_holds_back_count_only_for_a_request_of_a_bounded_class(load_score):
    """Engine 0 runs 4 requests and holds back 40 of the batch class past its share; engine 1 runs 8. An
    interactive request goes by vLLM's figures alone (the held ones never delay it): engine 0; a batch
    request queues behind the held ones: engine 1."""
    policy, engines = router(load_score=load_score, policy="load"), fleet()
    seq = engines[0].load_view.report.seq + 1
    engines[0].load_view.on_report(LoadReport("e", seq, 0, 4, 0, 0, 0, {}, held=40), FRONTEND)
    report(engines[1], running=8)
    assert policy.pick(prompt(1, 64), engines).rank == 0
    assert policy.pick(prompt(1, 64), engines, bounded=True).rank == 1
