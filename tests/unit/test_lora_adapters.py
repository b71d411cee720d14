"""The engine's LoRA adapters through its step loop, on a fake engine (FakeLoraEngine: records
add_lora/remove_lora, refuses a path that does not exist, no vLLM engine) and a fake publisher."""
import pytest

from common.messages import Add, Hello, LoadLora, UnloadLora, Welcome
from engine_worker.admission import VllmRequests
from engine_worker.load import LoadTracker
from engine_worker.lora import Adapters
from engine_worker.step_loop import Admitted, StepLoop
from tests.unit.test_step_loop import ENGINE_ID, FakeEngine, FakePublisher

FRONTEND = "host-0~aa"


class FakeLoraEngine(FakeEngine):
    def __init__(self):
        super().__init__()
        self.loaded: dict[int, str] = {}  # lora id -> path

    def add_lora(self, request):
        if request.lora_path.startswith("/missing"):
            raise RuntimeError(f"No adapter found for {request.lora_path}")
        self.loaded[request.lora_int_id] = request.lora_path
        return True

    def remove_lora(self, lora_id):
        return self.loaded.pop(lora_id, None) is not None


class BeatingPublisher(FakePublisher):
    def beat(self):
        self.sent.append((None, "beat"))


def make_loop(runtime_updates: bool, modules: dict[str, str] | None = None) -> StepLoop:
    engine = FakeLoraEngine()
    adapters = Adapters(engine, runtime_updates, model="model")
    adapters.load_configured(modules or {})
    return StepLoop(engine, ENGINE_ID, "model", "/tokenizer", BeatingPublisher(), LoadTracker(), 0.01, adapters)


def answer(loop: StepLoop, request_id: str):
    [delta] = [d for d in loop.publisher.deltas(FRONTEND) if d.request_id == request_id]
    return delta.finish_reason, delta.error


def test_configured_adapters_are_in_the_welcome_and_stay_when_updates_are_off():
    loop = make_loop(False, {"sql": "/adapters/sql"})
    loop.handle(0.0, Hello(FRONTEND))
    welcome = next(m for _, m in loop.publisher.sent if isinstance(m, Welcome))
    assert (welcome.loras, welcome.runtime_lora_updating) == ({"sql": "/adapters/sql"}, False)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "/adapters/chat"))
    loop.handle(0.0, UnloadLora("u1", FRONTEND, "sql"))
    for request_id in ("l1", "u1"):
        reason, error = answer(loop, request_id)
        assert reason == "error" and "allow_runtime_lora_updating" in error
    assert loop.adapters.listing == {"sql": "/adapters/sql"}
    assert (None, "beat") not in loop.publisher.sent


def test_a_load_reaches_vllm_and_every_frontend_hears_of_it_before_the_answer():
    loop = make_loop(True)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "/adapters/chat"))
    assert answer(loop, "l1") == ("stop", None)
    assert loop.adapters.listing == {"chat": "/adapters/chat"}
    lora = loop.adapters.request_for("chat")
    assert (lora.lora_name, lora.lora_path) == ("chat", "/adapters/chat")
    assert loop.engine.loaded == {lora.lora_int_id: "/adapters/chat"}
    kinds = [m if m == "beat" else type(m).__name__ for _, m in loop.publisher.sent]
    assert kinds.index("beat") < len(kinds) - 1 and kinds[-1] == "StepOutput"


@pytest.mark.parametrize("name, path, why", [
    ("chat", "/adapters/other", "already loaded"),
    ("bad", "/missing/adapter", "No adapter found for /missing/adapter"),
    ("model", "/adapters/x", "served model's own name"),
])
def test_a_refused_load_changes_nothing(name, path, why):
    loop = make_loop(True, {"chat": "/adapters/chat"})
    loop.handle(0.0, LoadLora("l1", FRONTEND, name, path))
    reason, error = answer(loop, "l1")
    assert reason == "error" and why in error
    assert loop.adapters.listing == {"chat": "/adapters/chat"}
    assert list(loop.engine.loaded.values()) == ["/adapters/chat"]


def test_unload_removes_it_from_vllm_and_a_reload_gets_a_new_id():
    loop = make_loop(True, {"chat": "/adapters/chat"})
    first_id = loop.adapters.request_for("chat").lora_int_id
    loop.handle(0.0, UnloadLora("u1", FRONTEND, "chat"))
    assert answer(loop, "u1") == ("stop", None)
    assert loop.engine.loaded == {} and loop.adapters.listing == {}
    loop.handle(0.0, UnloadLora("u2", FRONTEND, "chat"))
    assert answer(loop, "u2")[0] == "error"
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "/adapters/chat-v2"))
    assert loop.adapters.request_for("chat").lora_int_id != first_id


def test_a_request_for_an_adapter_unloaded_since_its_admission_is_refused():
    loop = make_loop(True, {"chat": "/adapters/chat"})
    message = Add("r1", FRONTEND, [1, 2], {"max_tokens": 2}, lora="chat")
    loop.handle(0.0, UnloadLora("u1", FRONTEND, "chat"))
    loop.handle(0.0, Admitted(message, {"prompt_token_ids": [1, 2]}, {"max_tokens": 2}))
    reason, error = answer(loop, "r1")
    assert reason == "error" and "'chat' is not loaded" in error
    assert loop.owners == {} and loop.engine.running == {}


def test_admission_refuses_an_adapter_the_engine_does_not_hold():
    adapters = Adapters(FakeLoraEngine())
    with pytest.raises(ValueError, match="'nope' is not loaded on this engine"):
        VllmRequests(FakeLoraEngine(), adapters)(Add("r1", FRONTEND, [1], {}, lora="nope"), 0.0)


def test_heartbeats_carry_the_adapters_and_a_change_sends_one_at_once(tmp_path):
    import time
    from types import SimpleNamespace

    import zmq

    from common.config import EngineLink
    from common.messages import Heartbeat, output_decoder
    from engine_worker.io_threads import OutputPublisher
    from engine_worker.load import LoadTracker

    context = zmq.Context()
    address = f"ipc://{tmp_path}/outputs"
    adapters = SimpleNamespace(listing={"sql": "/adapters/sql"})
    # A long interval: a heartbeat after the first one comes only from beat().
    publisher = OutputPublisher(context, address, EngineLink(heartbeat_interval_s=60), ENGINE_ID, LoadTracker(),
                                adapters)
    sub = context.socket(zmq.SUB)
    sub.connect(address)
    sub.setsockopt(zmq.SUBSCRIBE, b"*|")
    time.sleep(0.5)  # the subscription takes effect
    adapters.listing = {"sql": "/adapters/sql", "chat": "/adapters/chat"}
    publisher.beat()
    heartbeats = []
    while sub.poll(5000):  # the first, regular, heartbeat may come too, if the subscription was quick
        heartbeats.append(output_decoder.decode(sub.recv_multipart()[1]))
        if heartbeats[-1].loras == adapters.listing:
            break
    assert all(isinstance(h, Heartbeat) for h in heartbeats) and heartbeats[-1].loras == adapters.listing
    publisher.close()
    context.destroy()
