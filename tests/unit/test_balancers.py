"""The baseline policies (frontend/balancers.py) behind the router: round robin, and vLLM's own
data-parallel balancer as its DPLBAsyncMPClient counts."""
from common.config import RouterConfig
from frontend import balancers
from frontend.router import Router
from tests.unit.test_router import fleet, report


def test_round_robin_takes_each_engine_up_in_turn_from_the_frontends_index():
    engines = fleet(3)
    policy = Router(RouterConfig(policy="round_robin"), 3, frontend_index=1, frontends=2)
    assert [policy.pick([1, 2, 3], engines)[:2] for _ in range(4)] == [
        (1, "round_robin"), (2, "round_robin"), (0, "round_robin"), (1, "round_robin")]
    del engines[2]  # down: skipped
    assert {policy.pick([1, 2, 3], engines).rank for _ in range(4)} == {0, 1}


def test_vllm_dp_scores_four_times_waiting_plus_running_and_counts_its_sends_as_frontends(monkeypatch):
    now = [50.0]
    monkeypatch.setattr(balancers.time, "monotonic", lambda: now[0])
    engines = fleet(2)
    report(engines[0], waiting=1, running=4)  # 8
    report(engines[1], waiting=0, running=10)  # 10
    policy = Router(RouterConfig(policy="vllm_dp"), 2, frontend_index=0, frontends=2)
    # Each send adds the number of frontends (2) to its engine's waiting: 8 -> 16, then 10 -> 18, ...
    assert [policy.pick([1], engines)[:2] for _ in range(3)] == [(0, "vllm_dp"), (1, "vllm_dp"), (0, "vllm_dp")]
    # Between the coordinator's publications the engines' newer figures are not seen ...
    report(engines[1], waiting=0, running=0)
    assert policy.pick([1], engines).rank == 1  # 18 against 24, by its own counts
    assert policy.pick([1], engines).rank == 0  # 26 against 24
    # ... and a new publication, 100 ms on, replaces its own counts.
    report(engines[0], waiting=0, running=30)
    now[0] += balancers.VllmDataParallel.PUBLISH_INTERVAL_S
    assert policy.pick([1], engines).rank == 1  # 30 against 0


def test_vllm_dp_gives_ties_to_the_first_engine_scanned_and_moves_the_scan_on():
    engines = fleet(4)  # all idle: every score 0 until its own sends count
    second = Router(RouterConfig(policy="vllm_dp"), 4, frontend_index=1, frontends=2)
    # The scan starts at 1 × 4 / 2 = 2; each pick adds 2 to its engine and moves the start one on.
    assert [second.pick([1], engines).rank for _ in range(6)] == [2, 3, 0, 1, 2, 3]
