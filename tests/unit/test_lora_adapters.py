"""The engine's LoRA adapters through its step loop, on a fake engine (FakeLoraEngine: records
add_lora/remove_lora, refuses a directory without adapter_config.json, no vLLM engine) and a fake
publisher; run-time loads read from a lora_root made in a temporary directory."""
import os

import pytest

from common.messages import Add, Hello, ListLoras, LoadLora, Loras, UnloadLora, Welcome
from engine_worker.admission import VllmRequests
from engine_worker.load import LoadTracker
from engine_worker.lora import Adapters
from engine_worker.step_loop import Admitted, StepLoop
from tests.unit.test_step_loop import ENGINE_ID, FakeEngine, FakePublisher

FRONTEND = "host-0~aa"


class FakeLoraEngine(FakeEngine):
    def __init__(self, memory_slots: int | None = None):
        super().__init__()
        self.loaded: dict[int, str] = {}  # lora id -> path
        if memory_slots is not None:
            self.vllm_config = type("Config", (), {"lora_config": type("Lora", (), {"max_cpu_loras": memory_slots})})

    def add_lora(self, request):
        if not os.path.exists(os.path.join(request.lora_path, "adapter_config.json")):
            raise RuntimeError(f"No adapter found for {request.lora_path}")
        self.loaded[request.lora_int_id] = request.lora_path
        return True

    def remove_lora(self, lora_id):
        return self.loaded.pop(lora_id, None) is not None


@pytest.fixture
def root(tmp_path):
    """lora_root with adapters chat, chat-v2 and sql, a directory that is no adapter, and a way out."""
    root = tmp_path / "loras"
    for name in ("chat", "chat-v2", "sql"):
        (root / name).mkdir(parents=True)
        (root / name / "adapter_config.json").write_text("{}")
    (root / "empty").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    (root / "leaky").mkdir()
    (root / "leaky" / "adapter_config.json").symlink_to(outside / "adapter_config.json")
    return root


def make_loop(runtime_updates: bool, modules: dict[str, str] | None = None, root=None, **engine) -> StepLoop:
    engine = FakeLoraEngine(**engine)
    adapters = Adapters(engine, runtime_updates, model="model", root=root)
    adapters.load_configured(modules or {})
    return StepLoop(engine, ENGINE_ID, "model", "/tokenizer", FakePublisher(), LoadTracker(), 0.01, adapters)


def answer(loop: StepLoop, request_id: str):
    [delta] = [d for d in loop.publisher.deltas(FRONTEND) if d.request_id == request_id]
    return delta.finish_reason, delta.error


def test_configured_adapters_are_in_the_welcome_and_stay_when_updates_are_off(root):
    loop = make_loop(False, {"sql": str(root / "sql")}, root)
    loop.handle(0.0, Hello(FRONTEND))
    welcome = next(m for _, m in loop.publisher.sent if isinstance(m, Welcome))
    assert (welcome.loras, welcome.runtime_lora_updating) == ({"sql": str(root / "sql")}, False)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "chat"))
    loop.handle(0.0, UnloadLora("u1", FRONTEND, "sql"))
    for request_id in ("l1", "u1"):
        reason, error = answer(loop, request_id)
        assert reason == "error" and "allow_runtime_lora_updating" in error
    assert loop.adapters.listing == {"sql": str(root / "sql")}
    assert not any(isinstance(m, Loras) for _, m in loop.publisher.sent)


def test_a_load_reaches_vllm_and_every_frontend_hears_of_it_before_the_answer(root):
    loop = make_loop(True, root=root)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "chat"))
    assert answer(loop, "l1") == ("stop", None)
    assert loop.adapters.listing == {"chat": "chat"}
    lora = loop.adapters.request_for("chat")
    assert (lora.lora_name, lora.lora_path) == ("chat", str(root / "chat"))  # vLLM gets the resolved path
    assert loop.engine.loaded == {lora.lora_int_id: str(root / "chat")}
    kinds = [type(m).__name__ for _, m in loop.publisher.sent]
    assert kinds[-2:] == ["Loras", "StepOutput"]
    assert loop.publisher.sent[-2] == (None, Loras(ENGINE_ID, loop.adapters.version, {"chat": "chat"}))


def test_a_frontend_that_missed_a_change_asks_for_the_list(root):
    loop = make_loop(True, {"sql": str(root / "sql")}, root)
    loop.handle(0.0, ListLoras(FRONTEND))
    assert loop.publisher.sent[-1] == (FRONTEND, Loras(ENGINE_ID, loop.adapters.version, {"sql": str(root / "sql")}))


@pytest.mark.parametrize("name, path, why", [
    ("chat", "chat-v2", "already loaded"),
    ("bad", "empty", "vLLM could not load the LoRA adapter 'bad'"),
    ("model", "sql", "served model's own name"),
    ("out", "/etc", "must lie inside lora_root"),
    ("up", "../outside", "must lie inside lora_root"),
    ("link", "escape", "leads outside lora_root"),
    ("leak", "leaky", "leads outside lora_root"),
    ("hub", "org/adapter", "no LoRA adapter directory at lora_path 'org/adapter'"),
    ("ghost", "missing", "no LoRA adapter directory"),
])
def test_a_refused_load_changes_nothing_and_says_nothing_of_the_filesystem(root, name, path, why):
    loop = make_loop(True, {"chat": str(root / "chat")}, root)
    loop.handle(0.0, LoadLora("l1", FRONTEND, name, path))
    reason, error = answer(loop, "l1")
    assert reason == "error" and why in error
    assert str(root) not in error and "No adapter found" not in error
    assert loop.adapters.listing == {"chat": str(root / "chat")}
    assert list(loop.engine.loaded.values()) == [str(root / "chat")]


def test_without_lora_root_run_time_loads_are_refused(root):
    loop = make_loop(True)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", str(root / "chat")))
    assert "lora_root" in answer(loop, "l1")[1] and loop.engine.loaded == {}


def test_an_engine_holds_no_more_adapters_than_vllm_keeps_in_memory(root):
    """Past max_cpu_loras vLLM would forget one and read it again from its path, whose files may be gone."""
    loop = make_loop(True, {"chat": str(root / "chat")}, root, memory_slots=2)
    loop.handle(0.0, LoadLora("l1", FRONTEND, "sql", "sql"))
    loop.handle(0.0, LoadLora("l2", FRONTEND, "v2", "chat-v2"))
    assert answer(loop, "l1") == ("stop", None)
    assert "max_cpu_loras" in answer(loop, "l2")[1] and set(loop.adapters.listing) == {"chat", "sql"}


def test_unload_removes_it_from_vllm_and_a_reload_gets_a_new_id(root):
    loop = make_loop(True, {"chat": str(root / "chat")}, root)
    first_id = loop.adapters.request_for("chat").lora_int_id
    loop.handle(0.0, UnloadLora("u1", FRONTEND, "chat"))
    assert answer(loop, "u1") == ("stop", None)
    assert loop.engine.loaded == {} and loop.adapters.listing == {}
    loop.handle(0.0, UnloadLora("u2", FRONTEND, "chat"))
    assert answer(loop, "u2")[0] == "error"
    loop.handle(0.0, LoadLora("l1", FRONTEND, "chat", "chat-v2"))
    assert loop.adapters.request_for("chat").lora_int_id != first_id


def test_a_request_for_an_adapter_unloaded_since_its_admission_is_refused(root):
    loop = make_loop(True, {"chat": str(root / "chat")}, root)
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


def test_heartbeats_carry_the_version_of_the_adapters(tmp_path):
    from types import SimpleNamespace

    import zmq

    from common.config import EngineLinkConfig
    from common.messages import Heartbeat, output_decoder
    from engine_worker.io_threads import OutputPublisher
    from engine_worker.load import LoadTracker

    context = zmq.Context()
    address = f"ipc://{tmp_path}/outputs"
    adapters = SimpleNamespace(version=7)
    publisher = OutputPublisher(context, address, EngineLinkConfig(heartbeat_interval_s=0.05), ENGINE_ID, LoadTracker(),
                                adapters)
    sub = context.socket(zmq.SUB)
    sub.connect(address)
    sub.setsockopt(zmq.SUBSCRIBE, b"*|")
    assert sub.poll(5000)
    heartbeat = output_decoder.decode(sub.recv_multipart()[1])
    assert isinstance(heartbeat, Heartbeat) and heartbeat.loras_version == 7
    publisher.close()
    context.destroy()


def test_the_service_refuses_to_start_run_time_loading_without_a_lora_root_or_an_admin_key(tmp_path, monkeypatch):
    monkeypatch.delenv("ADMIN_API_KEY", raising=False)
    from common.config import InferenceConfig, ServerConfig
    from common.preflight import StartRefused, check_lora

    check_lora(ServerConfig(), InferenceConfig())
    with pytest.raises(StartRefused, match="needs admin_api_key"):
        check_lora(ServerConfig(), InferenceConfig(allow_runtime_lora_updating=True, lora_root=str(tmp_path)))
    server = ServerConfig(admin_api_key="k")
    with pytest.raises(StartRefused, match="allow_runtime_lora_updating needs lora_root"):
        check_lora(server, InferenceConfig(allow_runtime_lora_updating=True))
    with pytest.raises(StartRefused, match="is not a directory"):
        check_lora(server, InferenceConfig(allow_runtime_lora_updating=True, lora_root=str(tmp_path / "none")))
    check_lora(server, InferenceConfig(allow_runtime_lora_updating=True, lora_root=str(tmp_path)))
