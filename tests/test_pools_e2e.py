"""Model pools end to end, started by `python -m common.service` as `make serve` starts it: three pools
behind one nginx, two of this host's (inference.yml's `models:`, simulated engines, run by supervisord
as engine-sim-a-0 and engine-sim-b-0) and the session service's vLLM engine as a remote pool named by
its model. Requests go to the pool their `model` names, through the openai package; /v1/models lists
every pool; /metrics and /health give each pool under its name; a pool stopped answers 503 while the
others serve, and serves again once its engine is back. No vLLM engine is started here."""
import httpx
import openai
import pytest
from openai import OpenAI

from common import default_model
from common.config import ROOT
from tests.conftest import ENGINE_ARGS, health, pools_beside, wait_for
from tests.test_fleet_e2e import per_engine

MODEL = default_model.NAME
SIMULATED = ("sim-a", "sim-b")
PROFILE = ROOT / "tests/fixtures/step-time-profile-fixture.json"
ASK = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def pools(service):
    models = [{"served_model_name": name, "engine_backend": "simulated", "engine_args": ENGINE_ARGS,
               "simulator": {"profile": str(PROFILE), "seed": 7}} for name in SIMULATED]
    with pools_beside(service, "pools", models, MODEL) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def client(pools) -> OpenAI:
    return OpenAI(base_url=pools.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_every_pool_and_each_request_goes_to_its_models_pool(client):
    assert [card.id for card in client.models.list().data] == [*SIMULATED, MODEL]
    for model in (*SIMULATED, MODEL):
        answer = client.chat.completions.create(model=model, messages=ASK, max_tokens=4,
                                                extra_body={"ignore_eos": True})
        assert answer.model == model and answer.usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such-model", messages=ASK, max_tokens=4)
    assert refused.value.body["param"] == "model"


def test_metrics_and_health_give_each_pool_under_its_name(pools, client):
    client.completions.create(model=SIMULATED[1], prompt="Once", max_tokens=3)
    assert per_engine(pools.url, "llm_engine_up", "model", "engine") == {
        (model, "0"): 1 for model in (*SIMULATED, MODEL)}
    assert per_engine(pools.url, "llm_requests_finished_total", "model", "finish_reason")[(SIMULATED[1], "length")] >= 1
    assert health(pools.url).json()["models"] == [{"model": model, "ready": True} for model in (*SIMULATED, MODEL)]
    programs = pools.supervisorctl("status")
    assert "engine-sim-a-0" in programs and "engine-sim-b-0" in programs


def test_a_pool_stopped_answers_503_while_the_others_serve(pools, client):
    pools.supervisorctl("stop", "engine-sim-b-0")
    try:
        wait_for(lambda: health(pools.url).json()["status"] == "degraded", 60, 0.5, "sim-b to be down")
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model=SIMULATED[1], messages=ASK, max_tokens=4)
        assert refused.value.status_code == 503
        for model in (SIMULATED[0], MODEL):
            assert client.chat.completions.create(model=model, messages=ASK, max_tokens=4).model == model
    finally:
        pools.supervisorctl("start", "engine-sim-b-0")
    wait_for(lambda: health(pools.url).json()["status"] == "ok", 120, 0.5, "sim-b to be back")
    generated = httpx.post(pools.url + "/generate", json={"prompt": "Once", "model": SIMULATED[1], "max_tokens": 2},
                           headers={"accept": "application/json"}, timeout=60)
    assert generated.status_code == 200 and generated.json()["usage"]["completion_tokens"] == 2
