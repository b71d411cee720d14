"""The routing policy on its own (frontend/router.py), and the fleet's configuration: which engines
a frontend talks to, at which addresses, and which GPUs each local engine takes."""
import msgspec
import pytest

from common.config import InferenceConfig, RemoteEngine, RouterConfig, ServerConfig, gpus_of
from common.blocks import block_hashes
from frontend.router import Router

BLOCK = 16
IDLE = {0: 0.0, 1: 0.0}


def prompt(prefix: int, length: int, suffix: int = 0) -> list[int]:
    """`length` token ids that share their first part with every prompt of the same `prefix`."""
    return [prefix * 1000 + i for i in range(length - 8)] + [suffix * 100 + i for i in range(8)]


def router(**config) -> Router:
    return Router(RouterConfig(block_size=BLOCK, **config), 2)


def test_block_hashes_chain_and_skip_the_partial_block():
    a, b = block_hashes(list(range(40)), BLOCK), block_hashes([99] + list(range(1, 40)), BLOCK)
    assert len(a) == 2  # 40 tokens: two full blocks
    assert a[0] != b[0] and a[1] != b[1]  # the second block is the same tokens, after another parent
    assert block_hashes(list(range(40)), BLOCK) == a


def test_prompts_sharing_a_prefix_go_where_the_first_went():
    policy = router()
    first, reason = policy.pick(prompt(1, 200, suffix=1), IDLE)
    assert reason == "prefix"
    for suffix in range(2, 8):
        # Even with the first engine a little busier, the cached prefix wins.
        loads = {first: 4.0, 1 - first: 0.0}
        assert policy.pick(prompt(1, 200, suffix=suffix), loads) == (first, "prefix")


def test_a_new_prefix_has_the_same_home_in_every_frontend():
    """Two routers with no shared state place the same new prefix on the same engine."""
    homes = {(prefix, router().pick(prompt(prefix, 200), IDLE)[0]) for prefix in range(20)}
    assert homes == {(prefix, router().pick(prompt(prefix, 200, suffix=5), IDLE)[0]) for prefix in range(20)}
    assert {rank for _, rank in homes} == {0, 1}  # and different prefixes spread over the engines


def test_load_out_of_balance_overrides_the_prefix():
    policy = router(balance_abs_threshold=32, balance_rel_threshold=1.5)
    first, _ = policy.pick(prompt(1, 200), IDLE)
    busy = {first: 100.0, 1 - first: 10.0}
    assert policy.pick(prompt(1, 200, suffix=2), busy) == (1 - first, "load")
    # Both engines hold the prefix now: the less loaded of them gets the next one.
    assert policy.pick(prompt(1, 200, suffix=3), {first: 12.0, 1 - first: 14.0}) == (first, "prefix")


def test_a_load_gap_within_the_thresholds_keeps_the_prefix():
    policy = router(balance_abs_threshold=32, balance_rel_threshold=1.5)
    first, _ = policy.pick(prompt(1, 200), IDLE)
    assert policy.pick(prompt(1, 200, suffix=2), {first: 40.0, 1 - first: 10.0}) == (first, "prefix")
    assert policy.pick(prompt(1, 200, suffix=3), {first: 40.0, 1 - first: 30.0}) == (first, "prefix")


def test_a_burst_of_new_prompts_from_several_frontends_splits_evenly():
    """512 random prompts at once from 4 frontends, faster than any heartbeat: each frontend counts
    its own sends (4 points each, as waiting), so hashing new prompts home cannot pile them up."""
    frontends = [router() for _ in range(4)]
    sent = {0: 0, 1: 0}
    for frontend in frontends:
        own = {0: 0.0, 1: 0.0}
        for i in range(128):
            rank, _ = frontend.pick(prompt(10_000 + len(frontends) * i + frontends.index(frontend), 128), own)
            own[rank] += 4
            sent[rank] += 1
    assert abs(sent[0] - sent[1]) <= 8  # at most one request over per frontend and engine


def test_a_new_prompt_avoids_an_engine_with_a_queue_but_a_held_prefix_stays():
    """Saturated engines: a new prompt's home has requests waiting, the other engine has none; a queued
    request would wait for a whole generation to end, so it goes where it starts at once. A prompt
    whose prefix an engine holds stays there while load is within the thresholds (SGLang's rule)."""
    policy = router(balance_abs_threshold=32, balance_rel_threshold=1.5)
    home, _ = policy.home(block_hashes(prompt(1, 200), BLOCK), IDLE, least=0)
    other = 1 - home
    saturated = {home: 256.0 + 4 * 6, other: 250.0}  # within both thresholds
    assert policy.pick(prompt(1, 200), saturated, {home: 6, other: 0}) == (other, "load")
    assert policy.pick(prompt(1, 200, suffix=2), {other: 256.0 + 4 * 6, home: 250.0},
                       {other: 6, home: 0}) == (other, "prefix")
    # Out of balance, the held prefix moves after all.
    assert policy.pick(prompt(1, 200, suffix=3), {other: 400.0, home: 250.0}, {other: 40, home: 0}) == (home, "load")


def test_short_prompts_and_the_load_policy_go_to_the_least_loaded():
    assert router().pick(list(range(BLOCK - 1)), {0: 5.0, 1: 1.0}) == (1, "load")
    load_only = router(policy="load")
    load_only.pick(prompt(1, 200), {0: 0.0, 1: 1.0})
    assert load_only.pick(prompt(1, 200), {0: 9.0, 1: 1.0}) == (1, "load")


def test_a_small_shared_part_is_not_a_prefix_match():
    policy = router(min_match_ratio=0.5)
    first, _ = policy.pick([7] * 32 + list(range(1000, 1200)), IDLE)
    # Two blocks in common out of 14: below the ratio, so the holder of those two blocks is not chosen
    # for that reason; the new prompt goes to its own home.
    other = [7] * 32 + list(range(5000, 5200))
    rank, reason = policy.pick(other, IDLE)
    assert policy.holder(block_hashes(other, BLOCK), IDLE) is not None  # now it is remembered
    assert (rank, reason) == policy.home(block_hashes(other, BLOCK), IDLE, least=0)


def test_remembered_blocks_are_bounded_least_recent_first():
    policy = router(blocks_per_engine=20)
    loads = {0: 0.0}  # one engine up: everything lands there
    policy.pick(prompt(1, 160), loads)  # 10 blocks
    policy.pick(prompt(2, 160), loads)  # 10 more: full
    policy.pick(prompt(1, 160), loads)  # touches prefix 1 again
    policy.pick(prompt(3, 160), loads)  # evicts prefix 2, the least recently routed
    cached = policy.cached[0]
    assert len(cached) == 20
    assert all(block in cached for block in block_hashes(prompt(1, 160), BLOCK))
    assert not any(block in cached for block in block_hashes(prompt(2, 160), BLOCK))


def test_an_engine_down_is_never_chosen_and_a_restarted_one_is_forgotten():
    policy = router()
    first, _ = policy.pick(prompt(1, 200), IDLE)
    other = 1 - first
    # Only the other engine is up: its load is the only one offered.
    assert policy.pick(prompt(1, 200, suffix=2), {other: 50.0}) == (other, "prefix")
    policy.forget(other)
    assert not policy.cached[other]
    assert policy.pick(prompt(1, 200, suffix=3), IDLE) == (first, "prefix")


def test_engine_addresses_local_then_remote():
    server = ServerConfig(run_dir="/tmp/r", engines=[RemoteEngine("tcp://10.0.0.2:5555", "tcp://10.0.0.2:5556")])
    assert server.engine_addresses(2) == [
        ("ipc:///tmp/r/engine-requests", "ipc:///tmp/r/engine-outputs"),
        ("ipc:///tmp/r/engine-1-requests", "ipc:///tmp/r/engine-1-outputs"),
        ("tcp://10.0.0.2:5555", "tcp://10.0.0.2:5556"),
    ]
    tcp = msgspec.convert({"engine": {"request_address": "tcp://127.0.0.1:6000",
                                      "output_address": "tcp://127.0.0.1:6100"}, "local_engines": False}, ServerConfig)
    assert tcp.local_request_address(3) == "tcp://127.0.0.1:6003"
    assert tcp.local_output_address(3) == "tcp://127.0.0.1:6103"
    assert tcp.engine_addresses(2) == []  # a frontend-only host


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
