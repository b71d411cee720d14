"""The step loop over every row of its failure table, and its load reports, on a fake engine
(FakeEngine: requests in a dict, one token per step, no vLLM; FakeSplitEngine: the same behind a queue
of outputs, as vLLM's client of a separate engine core process) and a fake publisher (FakePublisher:
records what it is given)."""
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from common.messages import Abort, Add, Goodbye, Hello, LoadReport, Resync, StepOutput, TenantUse, Welcome
from engine_worker import step_loop
from engine_worker.admission import admitter
from engine_worker.load import LoadTracker
from engine_worker.step_loop import Admitted, Refused, StepLoop
from tests.conftest import wait_for

ENGINE_ID = "engine-1"


class FakeEngine:
    """Each running request yields one token per step until it has `max_tokens`."""

    def __init__(self):
        self.model_config = SimpleNamespace(max_model_len=64)
        self.running: dict[str, int] = {}
        self.aborted: list[str] = []
        self.refuse: set[str] = set()
        self.fail_next_step: Exception | None = None
        self.late_outputs: list[str] = []  # ids to report in the next step even though aborted

    def add_request(self, request_id, prompt, params, arrival_time=None):
        if request_id in self.refuse:
            raise ValueError(f"{request_id} is not a valid request")
        self.running[request_id] = params["max_tokens"]

    def abort_request(self, request_ids):
        self.aborted += request_ids
        for request_id in request_ids:
            self.running.pop(request_id, None)

    def step(self):
        if self.fail_next_step:
            raise self.fail_next_step
        outputs = []
        for request_id in [*self.running, *self.late_outputs]:
            left = self.running.get(request_id, 1) - 1
            finished = left == 0
            if request_id in self.running:
                self.running[request_id] = left
                if finished:
                    del self.running[request_id]
            completion = SimpleNamespace(token_ids=[7], finish_reason="length" if finished else None, logprobs=None,
                                         stop_reason=None)
            outputs.append(SimpleNamespace(request_id=request_id, outputs=[completion], finished=finished))
        self.late_outputs = []
        return outputs


class FakeSplitEngine(FakeEngine):
    """FakeEngine whose step() first takes the next item the test puts in `engine_core.outputs_queue`
    (with put_nowait, as vLLM's output thread does); `log` records adds and steps in order."""

    def __init__(self):
        super().__init__()
        self.engine_core = SimpleNamespace(outputs_queue=queue.Queue())
        self.log: list[str] = []

    def add_request(self, request_id, prompt, params, arrival_time=None):
        super().add_request(request_id, prompt, params, arrival_time)
        self.log.append(f"add {request_id}")

    def step(self):
        self.engine_core.outputs_queue.get()
        self.log.append("step")
        return super().step()


class FakePublisher:
    def __init__(self):
        self.sent: list[tuple[str | None, object]] = []
        self.forgotten: list[str] = []
        self.snapshots: list[str] = []
        self.closed = False

    def send(self, frontend_id, message):
        self.sent.append((frontend_id, message))

    def forget(self, frontend_id):
        self.forgotten.append(frontend_id)

    def snapshot(self, frontend_id):
        self.snapshots.append(frontend_id)

    def close(self):
        self.closed = True

    def deltas(self, frontend_id):
        return [d for f, m in self.sent if f == frontend_id and isinstance(m, StepOutput) for d in m.deltas]

    def reports(self):
        return [m for f, m in self.sent if isinstance(m, LoadReport)]


@pytest.fixture
def loop():
    return StepLoop(FakeEngine(), ENGINE_ID, "model", "/tokenizer", FakePublisher(), LoadTracker(), idle_wait_s=0.01)


def add(loop, request_id, frontend_id="host-0~aa", max_tokens=3, prefill_tokens=None):
    message = Add(request_id, frontend_id, [1, 2], {"max_tokens": max_tokens})
    loop.handle(0.0, Admitted(message, {"prompt_token_ids": [1, 2]}, {"max_tokens": max_tokens}, prefill_tokens))


def test_requests_run_to_their_end(loop):
    add(loop, "r1", max_tokens=2)
    loop.step()
    loop.step()
    deltas = loop.publisher.deltas("host-0~aa")
    assert [(d.token_ids, d.finish_reason) for d in deltas] == [([7], None), ([7], "length")]
    assert loop.owners == {}


def test_a_refused_request_gets_an_error_and_others_go_on(loop):
    loop.engine.refuse.add("bad")
    add(loop, "good", max_tokens=1)
    add(loop, "bad")
    loop.step()
    deltas = {d.request_id: d for d in loop.publisher.deltas("host-0~aa")}
    assert deltas["bad"].finish_reason == "error" and "not a valid request" in deltas["bad"].error
    assert deltas["good"].finish_reason == "length"


def test_admission_refuses_what_vllm_refuses_and_keeps_the_order():
    inbox = queue.Queue()

    def prepare(message, received_at, trace_headers=None):
        if message.sampling.get("bad"):
            raise ValueError("bad sampling")
        return Admitted(message, "prompt", "params")

    admit = admitter(inbox, prepare)
    admit(1.0, Add("a", "fe~1", [1], {"bad": True}))
    admit(2.0, Add("b", "fe~1", [1], {}))
    admit(3.0, Abort(["b"]))
    got = [inbox.get(timeout=5) for _ in range(3)]
    assert [type(m).__name__ for _, m in got] == ["Refused", "Admitted", "Abort"]
    assert got[0][1].error == "bad sampling"


def test_a_refusal_from_admission_reaches_its_frontend(loop):
    admit = admitter(loop.inbox, lambda message, at, trace_headers: (_ for _ in ()).throw(ValueError("schema too deep")))
    loop.handle(0.0, Hello("host-0~aa"))
    admit(0.0, Add("r1", "host-0~aa", [1], {}))
    loop.take_requests(block=True)
    [delta] = loop.publisher.deltas("host-0~aa")
    assert (delta.request_id, delta.finish_reason, delta.error) == ("r1", "error", "schema too deep")


def test_hello_aborts_what_its_id_owned_and_tells_the_owner_before_the_welcome(loop):
    add(loop, "r1")
    add(loop, "r2", frontend_id="host-1~bb")
    loop.handle(0.0, Hello("host-0~aa"))
    assert loop.engine.aborted == ["r1"]
    to_owner = [m for f, m in loop.publisher.sent if f == "host-0~aa"]
    assert isinstance(to_owner[-2], StepOutput) and isinstance(to_owner[-1], Welcome)
    [delta] = to_owner[-2].deltas
    assert (delta.request_id, delta.finish_reason) == ("r1", "abort") and "HELLO" in delta.error
    assert loop.owners == {"r2": "host-1~bb"}


def test_a_restarted_frontend_in_the_same_slot_ends_its_predecessors_requests(loop):
    add(loop, "old", frontend_id="host-0~aa")
    add(loop, "other-host", frontend_id="host2-0~cc")
    loop.handle(0.0, Hello("host-0~dd"))
    assert loop.engine.aborted == ["old"]
    [delta] = loop.publisher.deltas("host-0~aa")
    assert delta.finish_reason == "abort"
    assert (("host-0~dd", Welcome(ENGINE_ID, "host-0~dd", "model", "/tokenizer", 64))) in loop.publisher.sent
    assert "other-host" in loop.owners


def test_an_abort_during_a_step_drops_what_that_step_still_reports(loop):
    add(loop, "r1", max_tokens=5)
    add(loop, "r2", max_tokens=5)
    loop.handle(0.0, Abort(["r1", "unknown"]))
    loop.engine.late_outputs = ["r1"]  # vLLM had it in the step that was running
    loop.step()
    assert [d.request_id for d in loop.publisher.deltas("host-0~aa")] == ["r2"]
    assert loop.engine.aborted == ["r1"]
    loop.handle(0.0, Abort(["r1"]))  # idempotent
    assert loop.engine.aborted == ["r1"]


def goodbye_comes_before_the_aborts(sent, goodbye) -> bool:
    aborts = [i for i, (_, m) in enumerate(sent)
              if isinstance(m, StepOutput) and any(d.finish_reason == "abort" for d in m.deltas)]
    return bool(aborts) and sent.index((None, goodbye)) < min(aborts)


def test_a_failing_step_says_goodbye_then_ends_every_request_with_an_error_and_exit_1(loop):
    add(loop, "r1")
    add(loop, "r2", frontend_id="host-1~bb")
    loop.engine.fail_next_step = RuntimeError("EngineCore died")
    assert loop.serve() == 1
    for frontend_id, request_id in [("host-0~aa", "r1"), ("host-1~bb", "r2")]:
        [delta] = loop.publisher.deltas(frontend_id)
        assert (delta.request_id, delta.finish_reason) == (request_id, "abort")
        assert "EngineCore died" in delta.error
    # Goodbye first: frontends move what they can before the aborts arrive.
    assert (None, Goodbye(ENGINE_ID, failed=True)) in loop.publisher.sent and loop.publisher.closed
    assert goodbye_comes_before_the_aborts(loop.publisher.sent, Goodbye(ENGINE_ID, failed=True))
    assert "EngineCore died" in loop.failure


def test_shutdown_says_goodbye_then_aborts_every_request_and_exit_0(loop):
    add(loop, "r1", max_tokens=1000)
    real_step = loop.engine.step

    def step_then_stop():  # as SIGTERM's handler does, while a step runs
        loop.stopping = True
        return real_step()

    loop.engine.step = step_then_stop
    assert loop.serve() == 0
    deltas = loop.publisher.deltas("host-0~aa")
    assert deltas[-1].finish_reason == "abort" and "shutting down" in deltas[-1].error
    assert loop.engine.aborted == ["r1"]
    assert goodbye_comes_before_the_aborts(loop.publisher.sent, Goodbye(ENGINE_ID))


def test_a_broken_request_socket_ends_the_process_with_an_error(loop):
    loop.fail("the request socket failed")
    assert loop.serve() == 1


def test_an_idle_frontend_is_forgotten_and_welcomed_again_when_it_comes_back(loop, monkeypatch):
    monkeypatch.setattr(step_loop, "FORGET_AFTER_S", 0.0)
    loop.handle(0.0, Hello("host-0~aa"))
    add(loop, "busy", frontend_id="host-1~bb", max_tokens=100)
    loop.next_sweep = 0.0
    loop.forget_idle_frontends()
    assert loop.publisher.forgotten == ["host-0~aa"]  # not host-1, which still has a request
    loop.publisher.sent.clear()
    add(loop, "r1", max_tokens=1)
    loop.step()
    to_it = [type(m).__name__ for f, m in loop.publisher.sent if f == "host-0~aa"]
    assert to_it == ["Welcome", "StepOutput"]


def test_each_step_that_changes_the_load_is_reported_once_acknowledging_every_frontends_adds(loop):
    """One report a step at most, after the step, counting what each frontend sent since its Welcome,
    and the prompt tokens still to prefill (net of the cache hits estimated at admission) until each
    request's first token."""
    loop.load.set_kv_cache(num_blocks=101, block_size=16)
    add(loop, "a1", "host-0~aa", max_tokens=2, prefill_tokens=900)
    add(loop, "a2", "host-0~aa", max_tokens=2, prefill_tokens=100)
    add(loop, "b1", "host-1~bb", max_tokens=2)  # no estimate: its whole prompt (2 tokens)
    loop.handle(0.0, Refused(Add("b2", "host-1~bb", [1], {}), "refused by vLLM"))
    loop.report_load()
    [before] = loop.publisher.reports()
    assert before.taken == {"host-0~aa": 2, "host-1~bb": 2} and before.prefill_tokens == 1002
    loop.report_load()  # nothing changed: nothing sent
    assert len(loop.publisher.reports()) == 1
    loop.load.load.running, loop.load.load.kv_cache_usage = 3, 0.25  # as vLLM's stats say after the step
    loop.step()
    loop.report_load()
    after = loop.publisher.reports()[-1]
    assert (after.running, after.prefill_tokens, after.kv_tokens, after.free_blocks) == (3, 0, 25 * 16, 75)


def test_each_report_counts_the_frontends_it_hears_from_once_for_each_place_one_runs(loop):
    """How many routers may send it one burst: a frontend restarted in its slot (a HELLO from a new id)
    replaces the one before it, which counts no more."""
    for frontend_id in ("host-0~aa", "host-1~bb"):
        loop.handle(0.0, Hello(frontend_id))
    loop.report_load()
    loop.handle(0.0, Hello("host-0~cc"))
    add(loop, "c1", "host-2~dd", max_tokens=2)
    loop.report_load()
    assert [report.frontends for report in loop.publisher.reports()] == [2, 3]


def test_each_tenants_use_of_the_minute_is_reported(loop):
    """Requests when taken (not one moved here), prompt tokens with the first output, computed and
    from the prefix cache apart, and output tokens as they come."""
    steps = loop.engine.step
    loop.engine.step = lambda: [SimpleNamespace(**vars(output), num_cached_tokens=1) for output in steps()]
    for request_id, tenant, resumed in (("a1", "alpha", 0), ("a2", "alpha", 0), ("b1", "beta", 0), ("b2", "beta", 1)):
        message = Add(request_id, "host-0~aa", [1, 2, 3], {"max_tokens": 2}, resumed_tokens=resumed, tenant=tenant)
        loop.handle(0.0, Admitted(message, {"prompt_token_ids": [1, 2, 3]}, {"max_tokens": 2}))
    loop.handle(0.0, Abort(["a2"]))
    loop.step()
    loop.report_load()
    first = loop.publisher.reports()[-1]
    assert first.usage_minute == int(time.time() // 60)
    assert first.usage == {"alpha": TenantUse(2, 2, 1, 1), "beta": TenantUse(1, 4, 2, 2)}
    loop.step()
    loop.report_load()
    assert loop.publisher.reports()[-1].usage == {"alpha": TenantUse(2, 2, 1, 2), "beta": TenantUse(1, 4, 2, 4)}
    assert loop.tenant_of == {}


def test_an_aborted_request_leaves_the_prefill_backlog(loop):
    add(loop, "r1", prefill_tokens=500)
    add(loop, "r2", prefill_tokens=300)
    loop.handle(0.0, Abort(["r1"]))
    assert loop.backlog.tokens == 300
    loop.handle(0.0, Hello("host-0~aa"))  # a re-handshake aborts the rest
    assert loop.backlog.tokens == 0 and len(loop.backlog) == 0


def test_a_welcome_restarts_a_frontends_count(loop):
    add(loop, "r1", max_tokens=1)
    loop.handle(0.0, Hello("host-0~aa"))
    add(loop, "r2", max_tokens=1)
    loop.report_load()
    assert loop.publisher.reports()[-1].taken == {"host-0~aa": 1}


def test_a_resync_is_answered_with_a_snapshot_at_most_once_a_second(loop, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(step_loop.time, "monotonic", lambda: now[0])
    for frontend_id in ("host-0~aa", "host-1~bb"):
        loop.handle(0.0, Hello(frontend_id))
    for _ in range(3):
        loop.handle(0.0, Resync("host-0~aa"))
    loop.handle(0.0, Resync("host-1~bb"))
    loop.handle(0.0, Resync("host-2~never-welcomed"))
    now[0] += step_loop.RESYNC_INTERVAL_S
    loop.handle(0.0, Resync("host-0~aa"))
    assert loop.publisher.snapshots == ["host-0~aa", "host-1~bb", "host-0~aa"]
    assert set(loop.resynced) == {"host-0~aa", "host-1~bb"}



class FakePoolingEngine(FakeEngine):
    """An embedding model: each request finishes in its first step with its pooled vector (PoolingOutput.data)."""

    def __init__(self):
        super().__init__()
        self.model_config = SimpleNamespace(max_model_len=64, get_hidden_size=lambda: 3, is_matryoshka=True,
                                            matryoshka_dimensions=[2, 3], use_sep_token=True)

    def get_supported_tasks(self):
        return ("embed", "token_embed")

    def add_request(self, request_id, prompt, params, arrival_time=None):
        self.running[request_id] = 1

    def step(self):
        import torch

        outputs = [SimpleNamespace(request_id=request_id, outputs=SimpleNamespace(data=torch.tensor([0.5, -1.0, 2.0])),
                                   finished=True) for request_id in self.running]
        self.running = {}
        return outputs


def test_a_pooling_request_ends_in_one_delta_carrying_its_vector_and_the_welcome_says_what_the_model_does():
    loop = StepLoop(FakePoolingEngine(), ENGINE_ID, "embedder", "/tokenizer", FakePublisher(), LoadTracker(),
                    idle_wait_s=0.01)
    loop.handle(0.0, Hello("host-0~aa"))
    message = Add("p1", "host-0~aa", [1, 2], {}, pooling={"task": "embed"})
    loop.handle(0.0, Admitted(message, {"prompt_token_ids": [1, 2]}, "pooling params"))
    loop.step()
    [delta] = loop.publisher.deltas("host-0~aa")
    assert (delta.request_id, delta.token_ids, delta.finish_reason, delta.pooled) == (
        "p1", [], "stop", b"\x00\x00\x00?\x00\x00\x80\xbf\x00\x00\x00@")
    assert loop.owners == {} and loop.backlog.tokens == 0
    [welcome] = [m for _, m in loop.publisher.sent if isinstance(m, Welcome)]
    assert (welcome.tasks, welcome.embedding_size, welcome.is_matryoshka, welcome.matryoshka_dimensions) == (
        ["embed", "token_embed"], 3, True, [2, 3])


def test_a_request_arriving_while_the_engine_core_steps_is_added_before_that_step_returns():
    engine = FakeSplitEngine()
    loop = StepLoop(engine, ENGINE_ID, "model", "/tokenizer", FakePublisher(), LoadTracker(), idle_wait_s=60)
    add(loop, "r1", max_tokens=2)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    message = Add("r2", "host-0~aa", [1, 2], {"max_tokens": 1})
    loop.inbox.put((0.0, Admitted(message, {"prompt_token_ids": [1, 2]}, {"max_tokens": 1})))
    # The bell, not the minute-long wait, wakes the loop: r2 reaches the engine while r1's step runs.
    wait_for(lambda: engine.log == ["add r1", "add r2"], 5, 0.005, "r2 added while r1's step runs")
    engine.engine_core.outputs_queue.put_nowait("the first step's outputs")
    wait_for(lambda: engine.log == ["add r1", "add r2", "step"], 5, 0.005, "the first step")
    engine.engine_core.outputs_queue.put_nowait("the second step's outputs")
    wait_for(lambda: loop.owners == {}, 5, 0.005, "both requests to end")
    assert [(d.request_id, d.finish_reason) for d in loop.publisher.deltas("host-0~aa")] == [
        ("r1", None), ("r2", "length"), ("r1", "length")]
    loop.stopping = True
    loop.inbox.put((0.0, Abort([])))  # wakes the idle loop
    runner.join(5)
    assert not runner.is_alive()
