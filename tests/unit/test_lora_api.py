"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter on the frontend harness, with vLLM's bodies
and answers, for the holder of the admin API key: off (404) unless the engine takes adapters at run
time; loaded, listed, chosen by `model` and unloaded; every refusal naming its field. (lora_root,
vLLM's own refusals and a real adapter's effect on the text: tests/test_lora_e2e.py.)"""
import pytest

from common import default_model

MODEL = default_model.NAME
ADMIN_KEY = "admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def updating(frontends):
    frontend = frontends.get(lora_updates=True, admin_api_key=ADMIN_KEY)
    yield frontend
    for name in list(frontend.engine.loras):
        frontend.post("/v1/unload_lora_adapter", {"lora_name": name}, headers=ADMIN)


def model_ids(frontend) -> list[str]:
    return [card["id"] for card in frontend.http.get("/v1/models").json()["data"]]


def test_runtime_updates_are_off_unless_the_engine_takes_them(frontends, tmp_path):
    frontend = frontends.get(admin_api_key=ADMIN_KEY)
    for route, body in [("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)}),
                        ("/v1/unload_lora_adapter", {"lora_name": "x"})]:
        answer = frontend.post(route, body, headers=ADMIN)
        assert answer.status_code == 404 and "allow_runtime_lora_updating" in answer.json()["error"]["message"]
    assert model_ids(frontend) == [MODEL]


def test_load_then_choose_by_model_then_unload(updating, tmp_path):
    answer = updating.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(tmp_path)}, headers=ADMIN)
    assert (answer.status_code, answer.text) == (200, "Success: LoRA adapter 'sql' added successfully.")
    assert model_ids(updating) == [MODEL, "sql"]
    card = updating.http.get("/v1/models/sql").json()
    assert (card["parent"], card["root"]) == (MODEL, str(tmp_path))
    completion = updating.post("/v1/completions", {"model": "sql", "prompt": "hi", "max_tokens": 2}).json()
    assert completion["model"] == "sql" and updating.engine.added[-1].lora == "sql"
    answer = updating.post("/v1/unload_lora_adapter", {"lora_name": "sql"}, headers=ADMIN)
    assert (answer.status_code, answer.text) == (200, "Success: LoRA adapter 'sql' removed successfully.")
    assert model_ids(updating) == [MODEL]
    gone = updating.post("/v1/completions", {"model": "sql", "prompt": "hi", "max_tokens": 2})
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"


def test_bad_updates_are_refused_naming_the_field(updating, tmp_path):
    loaded = updating.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(tmp_path)}, headers=ADMIN)
    assert loaded.status_code == 200
    refusals = [
        ({"lora_name": "ghost", "lora_path": "/nonexistent/adapter"}, 400, "lora_path", "no LoRA adapter directory"),
        ({"lora_name": "sql", "lora_path": str(tmp_path)}, 400, "lora_name", "already been loaded"),
        ({"lora_name": "sql", "lora_path": str(tmp_path / "other")}, 400, "lora_path", "already loaded from"),
        ({"lora_name": MODEL, "lora_path": str(tmp_path)}, 400, "lora_name", "served model"),
        ({"lora_path": str(tmp_path)}, 400, "lora_name", "lora_name"),
        ({"lora_name": "x", "lora_path": str(tmp_path), "load_inplace": True}, 400, "load_inplace", "not supported"),
        ({"lora_name": "x", "lora_path": str(tmp_path), "is_3d_lora_weight": True}, 400, "is_3d_lora_weight",
         "not supported"),
    ]
    for body, status, field, words in refusals:
        answer = updating.post("/v1/load_lora_adapter", body, headers=ADMIN)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["param"] == field and words in answer.json()["error"]["message"], answer.text
    unknown = updating.post("/v1/unload_lora_adapter", {"lora_name": "ghost"}, headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "lora_name"
    assert model_ids(updating) == [MODEL, "sql"]
