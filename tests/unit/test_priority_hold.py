"""Each priority class's share of the engine's slots (engine_worker/priority_hold.py), and the step loop
holding a bounded class's requests back, on test_step_loop's fake engine (FakeEngine: one token a step,
no vLLM) and fake publisher; and the class given to vLLM's input processor (a fake recording its
arguments) only under scheduling_policy priority."""
from types import SimpleNamespace

import pytest

from common.messages import Abort, Add, Hello
from engine_worker.admission import VllmRequests
from engine_worker.load import LoadTracker
from engine_worker.priority_hold import PriorityHold
from engine_worker.step_loop import Admitted, StepLoop
from tests.unit.test_step_loop import ENGINE_ID, FakeEngine, FakePublisher

INTERACTIVE, BATCH = 0, 2
SHARES = [1.0, 1.0, 0.25]  # of 8 slots: 2 batch requests in vLLM at once


def admitted(request_id: str, priority: int, tenant: str = "t", max_tokens: int = 3,
             frontend_id: str = "host-0~aa") -> Admitted:
    add = Add(request_id, frontend_id, [1, 2], {"max_tokens": max_tokens}, tenant=tenant, priority=priority)
    return Admitted(add, {"prompt_token_ids": [1, 2]}, {"max_tokens": max_tokens})


def started(hold: PriorityHold, *items: Admitted) -> list[str]:
    going = []
    for item in items:
        if hold.admits(0.0, item):
            hold.start(item.add)
            going.append(item.add.request_id)
    return going


def test_a_bounded_class_gets_its_share_of_max_num_seqs_and_the_others_are_held():
    hold = PriorityHold(8, SHARES)
    assert hold.limits == {BATCH: 2}
    assert started(hold, *(admitted(f"b{i}", BATCH) for i in range(4)), admitted("i0", INTERACTIVE)) == \
        ["b0", "b1", "i0"]
    assert len(hold) == 2 and hold.release() == []
    hold.ended("i0")  # an interactive request's end frees no batch slot
    assert hold.release() == []
    hold.ended("b0")
    assert [held.admitted.add.request_id for held in hold.release()] == ["b2"]


def test_a_share_gives_at_least_one_slot():
    assert PriorityHold(3, [1.0, 0.1]).limits == {1: 1}


def test_held_requests_go_on_in_turn_by_tenant_each_tenants_in_order():
    hold = PriorityHold(4, [1.0, 0.25])  # one at a time
    flood = [admitted(f"a{i}", 1, tenant="a") for i in range(3)]
    assert started(hold, *flood, admitted("b0", 1, tenant="b"), admitted("b1", 1, tenant="b")) == ["a0"]
    order = ["a0"]
    for _ in range(4):
        hold.ended(order[-1])
        [held] = hold.release()
        hold.start(held.admitted.add)
        order.append(held.admitted.add.request_id)
    assert order == ["a0", "a1", "b0", "a2", "b1"]


def test_a_dropped_held_request_never_goes_on():
    hold = PriorityHold(4, [1.0, 0.25])
    started(hold, admitted("a0", 1), admitted("a1", 1), admitted("a2", 1))
    assert [add.request_id for add in hold.drop(["a1", "unknown"])] == ["a1"]
    hold.ended("a0")
    assert [held.admitted.add.request_id for held in hold.release()] == ["a2"]


def loop_with_hold() -> StepLoop:
    engine = FakeEngine()
    engine.vllm_config = None
    return StepLoop(engine, ENGINE_ID, "model", "/tokenizer", FakePublisher(), LoadTracker(), idle_wait_s=0.01,
                    hold=PriorityHold(8, SHARES))


def test_the_step_loop_holds_batch_past_its_share_and_starts_it_as_batch_ends():
    loop = loop_with_hold()
    for i in range(3):
        loop.handle(0.0, admitted(f"b{i}", BATCH, max_tokens=2))
    loop.handle(0.0, admitted("i0", INTERACTIVE, max_tokens=1))
    assert set(loop.engine.running) == {"b0", "b1", "i0"}
    loop.report_load()
    assert loop.publisher.reports()[-1].held == 1
    assert loop.publisher.reports()[-1].taken == {"host-0~aa": 4}  # a held ADD is acknowledged as taken
    loop.step()
    loop.start_held()
    assert "b2" not in loop.engine.running  # i0 ended, not a batch request
    loop.step()
    loop.start_held()
    assert set(loop.engine.running) == {"b2"}
    loop.report_load()
    assert loop.publisher.reports()[-1].held == 0


def test_an_abort_drops_a_held_request_and_hello_aborts_its_frontends_held_ones():
    loop = loop_with_hold()
    for i in range(4):
        loop.handle(0.0, admitted(f"b{i}", BATCH, max_tokens=5))
    loop.handle(0.0, Abort(["b2"]))
    assert list(loop.hold.held) == ["b3"] and "b2" not in loop.engine.aborted  # vLLM never had it
    loop.handle(0.0, Hello("host-0~bb"))  # the same slot: the earlier frontend's requests are dropped
    aborted = {d.request_id: d.finish_reason for d in loop.publisher.deltas("host-0~aa")}
    assert aborted == {"b0": "abort", "b1": "abort", "b3": "abort"}
    assert len(loop.hold) == 0 and loop.hold.in_engine == {BATCH: 0}


class Processor:
    """vLLM's input processor, as VllmRequests calls it: it records the keyword arguments."""

    def __init__(self):
        self.calls: list[dict] = []

    def process_inputs(self, request_id, prompt, params, arrival_time=None, lora_request=None, priority=0):
        self.calls.append({"priority": priority})
        return SimpleNamespace(sampling_params=params)


def vllm_requests(policy: str) -> VllmRequests:
    engine = SimpleNamespace(input_processor=Processor(),
                             vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(policy=policy)))
    return VllmRequests(engine, SimpleNamespace(request_for=lambda name: None))


@pytest.mark.parametrize("policy, given", [("priority", BATCH), ("fcfs", 0)])
def test_the_class_reaches_vllm_only_under_its_priority_policy(policy, given):
    requests = vllm_requests(policy)
    requests(Add("r1", "host-0~aa", [1, 2], {"max_tokens": 2}, priority=BATCH), 0.0)
    assert requests.processor.calls == [{"priority": given}]
