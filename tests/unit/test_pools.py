"""Model pools on the frontend harness: three models, each a pool with a scripted engine of its own,
behind one frontend. Requests go to the pool their `model` names (the first without one), /v1/models
lists every pool, an unknown model is a 404 in each protocol's shape, a pool whose engine stops answers
503 while the others serve, and /metrics, /health and /stats give each pool's figures under its name."""
import anthropic
import httpx2
import msgspec
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from common import default_model
from common.config import InferenceConfig, RemoteEngine, ServerConfig
from common.preflight import StartRefused, check_inference
from tests.unit.frontend_harness import Frontend

MODEL = default_model.NAME
OTHERS = ("second-chat", "third-chat")
ASK = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def pools(frontends) -> Frontend:
    # Four threads' event loops share the GIL here: a generous heartbeat timeout, so that a busy machine
    # does not take a pool for down.
    frontend = frontends.get(models=OTHERS, engine={"heartbeat_timeout_s": 15})
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engines")


@pytest.fixture
def client(pools) -> OpenAI:
    return OpenAI(base_url=f"{pools.url}/v1", api_key="unused", max_retries=0, timeout=30, http_client=pools.http)


def test_models_lists_every_pool(client):
    assert [card.id for card in client.models.list().data] == [MODEL, *OTHERS]
    assert client.models.retrieve(OTHERS[1]).id == OTHERS[1]


def test_each_request_goes_to_the_pool_its_model_names(pools, client):
    pools.pool_engines[OTHERS[0]].reply("from the second")
    answer = client.chat.completions.create(model=OTHERS[0], messages=ASK, max_tokens=20)
    assert answer.model == OTHERS[0] and answer.choices[0].message.content == "from the second"
    pools.pool_engines[OTHERS[1]].reply("from the third")
    completion = client.completions.create(model=OTHERS[1], prompt="Once", max_tokens=20)
    assert completion.model == OTHERS[1] and completion.choices[0].text == "from the third"
    pools.engine.reply("from the first")
    assert client.chat.completions.create(model=MODEL, messages=ASK).choices[0].message.content == "from the first"
    pools.pool_engines[OTHERS[0]].reply("generated")
    generated = pools.post("/generate", {"prompt": "Once", "model": OTHERS[0]}, headers={"accept": "application/json"})
    assert generated.status_code == 200 and generated.json()["text"] == "generated"
    assert [len(engine.added) > 0 for engine in pools.engines] == [True, True, True]


def test_a_request_without_model_goes_to_the_first_pool(pools):
    sent = {model: len(engine.added) for model, engine in pools.pool_engines.items()}
    pools.engine.reply("first")
    answer = pools.post("/generate", {"prompt": "Once"}, headers={"accept": "application/json"})
    assert answer.status_code == 200 and answer.json()["text"] == "first"
    assert {model: len(engine.added) for model, engine in pools.pool_engines.items()} == sent


def test_an_unknown_model_is_a_404_in_each_protocols_shape(pools, client):
    sent = sum(len(engine.added) for engine in pools.engines)
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such-model", messages=ASK)
    error = refused.value.body
    assert error["param"] == "model" and all(f"'{name}'" in error["message"] for name in (MODEL, *OTHERS))
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="Once")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    generated = pools.post("/generate", {"prompt": "Once", "model": "no-such-model"})
    assert generated.status_code == 404 and generated.json()["error"]["param"] == "model"
    with httpx2.Client(verify=False) as http, pytest.raises(anthropic.NotFoundError) as refused:
        messages = Anthropic(base_url=pools.url, api_key="unused", max_retries=0, timeout=30, http_client=http)
        messages.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "not_found_error"
    assert "model" in refused.value.body["error"]["message"]
    assert sum(len(engine.added) for engine in pools.engines) == sent


def samples(frontend: Frontend, name: str) -> dict:
    text = frontend.http.get("/metrics").text
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def test_metrics_health_and_stats_give_each_pool_under_its_name(pools, client):
    finished = samples(pools, "llm_requests_finished_total")
    pools.pool_engines[OTHERS[1]].reply("counted")
    client.chat.completions.create(model=OTHERS[1], messages=ASK)
    after = samples(pools, "llm_requests_finished_total")
    key = (("finish_reason", "stop"), ("model", OTHERS[1]))
    assert after[key] == finished.get(key, 0) + 1
    assert all(after[labels] == finished[labels] for labels in finished if labels != key)
    assert set(samples(pools, "llm_engine_up")) == {(("engine", "0"), ("model", model)) for model in (MODEL, *OTHERS)}
    health = pools.health().json()
    assert health["status"] == "ok" and health["models"] == [{"model": model, "ready": True}
                                                             for model in (MODEL, *OTHERS)]
    stats = pools.http.get("/stats").json()
    assert stats["models"] == [MODEL, *OTHERS]
    assert [(engine["model"], engine["rank"], engine["state"]) for engine in stats["engines"]] == [
        (model, 0, "up") for model in (MODEL, *OTHERS)]


def test_a_pool_that_is_down_answers_503_while_the_others_serve(tokenizer, tmp_path_factory):
    frontend = Frontend(str(tmp_path_factory.mktemp("down")), tokenizer, {}, models=OTHERS[:1])
    try:
        client = OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=30,
                        http_client=frontend.http)
        frontend.pool_engines[OTHERS[0]].stop()
        frontend.wait(lambda: frontend.health().json()["status"] == "degraded", 30, "the second pool to be down")
        assert frontend.health().status_code == 200
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model=OTHERS[0], messages=ASK)
        assert refused.value.status_code == 503 and OTHERS[0] in refused.value.body["message"]
        frontend.engine.reply("still here")
        assert client.chat.completions.create(model=MODEL, messages=ASK).choices[0].message.content == "still here"
        assert [card.id for card in client.models.list().data] == [MODEL, OTHERS[0]]
    finally:
        frontend.pool_engines.clear()  # stopped above
        frontend.stop()


def test_models_config_gives_each_pool_its_engines_programs_and_addresses():
    inference = msgspec.convert({"models": [
        {"model": "/models/chat", "engine_args": {"data_parallel_size": 2}},
        {"model": "/models/embed", "served_model_name": "embed"},
    ]}, InferenceConfig)
    assert [pool.served_name for pool in inference.pools] == ["/models/chat", "embed"]
    assert [inference.first_slot(index) for index in range(2)] == [0, 2] and inference.local_engines == 3
    assert [inference.program(0, 1), inference.program(1, 0)] == ["engine--models-chat-1", "engine-embed-0"]
    server = ServerConfig(run_dir="/tmp/r", engines=[RemoteEngine("tcp://h:1", "tcp://h:2", model="embed"),
                                                     RemoteEngine("tcp://g:1", "tcp://g:2")])
    addresses = server.pool_addresses([(pool.served_name, pool.data_parallel_size) for pool in inference.pools])
    assert addresses == {
        "/models/chat": [("ipc:///tmp/r/engine-requests", "ipc:///tmp/r/engine-outputs"),
                         ("ipc:///tmp/r/engine-1-requests", "ipc:///tmp/r/engine-1-outputs"),
                         ("tcp://g:1", "tcp://g:2")],  # no `model`: the first pool's
        "embed": [("ipc:///tmp/r/engine-2-requests", "ipc:///tmp/r/engine-2-outputs"), ("tcp://h:1", "tcp://h:2")],
    }
    single = InferenceConfig(model="/models/chat")
    assert single.pools == [single] and single.program(0, 0) == "engine-0"


@pytest.mark.parametrize("given, refusal", [
    ({"model": "/m", "models": [{"model": "/n"}]}, "move model into one"),
    ({"models": [{"model": "/m"}, {"model": "/n", "served_model_name": "/m"}]},
     "two models or LoRA adapters are served as '/m'"),
    ({"models": [{"model": "/m", "lora_modules": {"sql": "/a"}}, {"model": "/n", "lora_modules": {"sql": "/b"}}]},
     "two models or LoRA adapters are served as 'sql'"),
    ({"models": [{"model": "/m", "lora_modules": {"/n": "/a"}}, {"model": "/n"}]},
     "two models or LoRA adapters are served as '/n'"),
])
def test_a_models_config_that_cannot_be_served_is_refused(given, refusal):
    with pytest.raises(msgspec.ValidationError, match=refusal):
        msgspec.convert(given, InferenceConfig)


def test_the_start_refuses_a_pool_whose_settings_cannot_run_naming_its_entry():
    inference = msgspec.convert({"models": [
        {"model": "/models/chat"},
        {"model": "/models/other", "served_model_name": "other", "engine_args": {"served_model_name": "x"}},
    ]}, InferenceConfig)
    with pytest.raises(StartRefused, match=r"^inference.yml: models\[1\] \(other\): served_model_name is given twice"):
        check_inference(ServerConfig(), inference)
    simulated = msgspec.convert({"models": [
        {"model": "/models/chat"},
        {"served_model_name": "sim", "engine_backend": "simulated", "lora_modules": {"sql": "/adapters/sql"}},
    ]}, InferenceConfig)
    with pytest.raises(StartRefused, match=r"^inference.yml: models\[1\] \(sim\): the simulated engine serves no LoRA"):
        check_inference(ServerConfig(), simulated)


def test_a_lora_adapter_loads_into_the_pool_model_names_and_its_name_routes_there(frontends, tmp_path):
    admin = {"authorization": "Bearer admin-key"}
    frontend = frontends.get(models=OTHERS[:1], lora_updates=True, admin_api_key="admin-key",
                             engine={"heartbeat_timeout_s": 15})
    second = frontend.pool_engines[OTHERS[0]]
    try:
        loaded = frontend.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(tmp_path),
                                                         "model": OTHERS[0]}, headers=admin)
        assert loaded.status_code == 200 and "sql" in second.loras and frontend.engine.loras == {}
        frontend.wait(lambda: "sql" in frontend.state.pools[1].client.loras, 10, "the frontend to learn of sql")
        cards = {card["id"]: card["parent"] for card in frontend.http.get("/v1/models").json()["data"]}
        assert cards == {MODEL: None, OTHERS[0]: None, "sql": OTHERS[0]}
        completion = frontend.post("/v1/completions", {"model": "sql", "prompt": "hi", "max_tokens": 2}).json()
        assert completion["model"] == "sql" and second.added[-1].lora == "sql"
        again = frontend.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(tmp_path)}, headers=admin)
        assert again.status_code == 400 and f"already served by {OTHERS[0]}" in again.json()["error"]["message"]
        wrong = frontend.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path), "model": "sql"},
                              headers=admin)
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"
    finally:
        frontend.post("/v1/unload_lora_adapter", {"lora_name": "sql", "model": OTHERS[0]}, headers=admin)
