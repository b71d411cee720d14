"""Tenants (frontend/tenants.py, frontend/auth.py) on the frontend harness: keys by digest, 401 for an
unknown key and 404 for a model a tenant may not use in each protocol's shape, the max_tokens cap, the
per-frontend max_concurrent, a tenant's own request timeout, and a reload adding and removing keys."""
import hashlib
import subprocess
import sys

import anthropic
import msgspec
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common import default_model
from common.config import ROOT, ServerConfig, load_tenants
from frontend.tenants import Tenants, key_hash

ALPHA_KEY, BETA_KEY, GAMMA_KEY = "sk-alpha-0123456789", "sk-beta-0123456789", "sk-gamma-0123456789"
DELTA_KEY = "sk-delta-0123456789"
OTHER_MODEL = "other-model"
TENANTS = [
    {"name": "alpha", "api_key_hashes": [key_hash(ALPHA_KEY)], "max_tokens": 3},
    {"name": "beta", "api_key_hashes": [key_hash(BETA_KEY)], "models": [OTHER_MODEL], "max_concurrent": 1},
    {"name": "delta", "api_key_hashes": [key_hash(DELTA_KEY)], "request_timeout_s": 0.5},
]
LONG = {"max_tokens": 5000, "ignore_eos": True}


@pytest.fixture
def tenanted(frontends):
    frontend = frontends.get(models=(OTHER_MODEL,), tenants=TENANTS)
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")


def keyed(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def generate_status(frontend, key: str) -> int:
    return frontend.post("/generate", {"prompt": "hi", "max_tokens": 2}, headers=keyed(key)).status_code


def test_a_key_is_kept_as_its_sha256_digest_and_the_command_makes_one():
    assert key_hash("k") == "sha256:" + hashlib.sha256(b"k").hexdigest()
    made = subprocess.run([sys.executable, "-m", "frontend.tenants", "hash"], input="sk-x\n", text=True,
                          capture_output=True, cwd=ROOT, check=True)
    assert made.stdout.strip() == key_hash("sk-x")
    fresh = subprocess.run([sys.executable, "-m", "frontend.tenants", "new-key"], text=True, capture_output=True,
                           cwd=ROOT, check=True).stdout.split()
    assert fresh[0] == "key:" and fresh[2] == "sha256:" and fresh[3] == key_hash(fresh[1])


@pytest.mark.parametrize("tenants, wrong", [
    ([{"name": "a", "api_key_hashes": ["plain-key"]}], "api_key_hashes"),
    ([{"name": "a b", "api_key_hashes": []}], "name"),
    ([{"name": "a", "api_key_hashes": [], "max_tokens": -1}], "max_tokens"),
])
def test_a_wrong_tenant_is_refused_naming_its_field(tenants, wrong):
    with pytest.raises(msgspec.ValidationError, match=wrong):
        msgspec.convert({"tenants": tenants}, ServerConfig)


@pytest.mark.parametrize("tenants, wrong", [
    ([{"name": "default", "api_key_hashes": []}], "'default' is given twice or reserved"),
    ([{"name": "a", "api_key_hashes": []}, {"name": "a", "api_key_hashes": []}], "'a' is given twice"),
    ([{"name": "a", "api_key_hashes": [key_hash("k")]}, {"name": "b", "api_key_hashes": [key_hash("k")]}],
     "'b' holds a key another tenant holds"),
])
def test_tenants_that_clash_are_refused(tenants, wrong):
    with pytest.raises(ValueError, match=wrong):
        load_tenants(msgspec.convert({"tenants": tenants}, ServerConfig))


def test_two_tenants_each_served_with_their_own_key_bearer_or_x_api_key(tenanted):
    alpha = tenanted.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, headers=keyed(ALPHA_KEY))
    assert alpha.status_code == 200 and alpha.json()["model"] != OTHER_MODEL
    beta = tenanted.post("/v1/completions", {"model": OTHER_MODEL, "prompt": "hi", "max_tokens": 2},
                         headers={"x-api-key": BETA_KEY})
    assert beta.status_code == 200 and beta.json()["model"] == OTHER_MODEL
    # beta's only model is the default one of its requests
    assert generate_status(tenanted, BETA_KEY) == 200


LONG_KEY = "x" * 60_000  # far over any key, under the request head's bound (a 10 MB one: a 431, test_security)


@pytest.mark.parametrize("headers", [{}, keyed("sk-unknown"), {"x-api-key": "sk-unknown"}, keyed(LONG_KEY),
                                     {"x-api-key": LONG_KEY}])
def test_an_unknown_key_is_a_401_in_each_protocols_shape(tenanted, headers):
    body = {"prompt": "hi", "max_tokens": 2}
    for path in ("/v1/completions", "/generate"):
        answer = tenanted.post(path, body, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
    messages = tenanted.post("/v1/messages", {"model": "m", "max_tokens": 2, "messages": [{"role": "user",
                                                                                            "content": "hi"}]},
                             headers=headers)
    assert messages.status_code == 401
    assert messages.json() == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": messages.json()["error"]["message"]}}
    assert "API key" in messages.json()["error"]["message"]


def test_the_sdks_raise_their_authentication_errors(tenanted):
    with pytest.raises(openai.AuthenticationError, match="not one this server knows"):
        openai.OpenAI(base_url=f"{tenanted.url}/v1", api_key="sk-unknown", max_retries=0).completions.create(
            model="m", prompt="hi", max_tokens=2)
    with pytest.raises(anthropic.AuthenticationError, match="not one this server knows"):
        anthropic.Anthropic(base_url=tenanted.url, api_key="sk-unknown", max_retries=0).messages.create(
            model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_a_model_the_tenant_may_not_use_is_a_404_and_not_listed(tenanted):
    served = tenanted.state.pools[0].model
    refused = tenanted.post("/v1/completions", {"model": served, "prompt": "hi", "max_tokens": 2},
                            headers=keyed(BETA_KEY))
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "model"
    assert f"the model {served!r} does not exist" in refused.json()["error"]["message"]
    messages = tenanted.post("/v1/messages", {"model": served, "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]}, headers=keyed(BETA_KEY))
    assert messages.status_code == 404 and messages.json()["error"]["type"] == "not_found_error"
    listed = tenanted.http.get("/v1/models", headers=keyed(BETA_KEY)).json()["data"]
    assert [card["id"] for card in listed] == [OTHER_MODEL]
    everything = tenanted.http.get("/v1/models", headers=keyed(ALPHA_KEY)).json()["data"]
    assert {card["id"] for card in everything} == {served, OTHER_MODEL}


def test_max_tokens_is_capped_at_the_tenants(tenanted):
    answer = tenanted.post("/v1/completions", {"prompt": "hi", **LONG}, headers=keyed(ALPHA_KEY)).json()
    assert answer["usage"]["completion_tokens"] == 3 and answer["choices"][0]["finish_reason"] == "length"
    assert tenanted.engine.added[-1].sampling["max_tokens"] == 3


def test_past_max_concurrent_a_429_with_retry_after_and_other_tenants_go_on(tenanted):
    body = {"model": OTHER_MODEL, "prompt": "hi", "stream": True, **LONG}
    with tenanted.http.stream("POST", "/v1/completions", json=body, headers=keyed(BETA_KEY)) as running:
        assert running.status_code == 200
        second = tenanted.post("/v1/completions", {**body, "stream": False}, headers=keyed(BETA_KEY))
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["type"] == "rate_limit_exceeded"
        assert "'beta' has its limit of 1 requests open at once" in second.json()["error"]["message"]
        with pytest.raises(anthropic.RateLimitError):
            anthropic.Anthropic(base_url=tenanted.url, api_key=BETA_KEY, max_retries=0).messages.create(
                model=OTHER_MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert generate_status(tenanted, ALPHA_KEY) == 200
    # the stream left: its slot is free
    tenanted.wait(lambda: tenanted.app.state.tenants.open["beta"] == 0, 10, "beta's stream to end")
    answer = tenanted.post("/v1/completions", {**body, "stream": False, "max_tokens": 1}, headers=keyed(BETA_KEY))
    assert answer.status_code == 200


def test_a_tenants_request_timeout_ends_its_requests_and_aborts_them_in_the_engine(tenanted):
    timed_out = tenanted.post("/v1/completions", {"prompt": "hi", **LONG}, headers=keyed(DELTA_KEY))
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["message"] == "the request ran past its 0.5 s request timeout"
    request_id = tenanted.engine.added[-1].request_id
    tenanted.wait(lambda: request_id in tenanted.engine.aborted, 10, "the engine to abort the request")
    tenanted.engine.reply_ids(tenanted.engine.plain[:1] * 4000)  # Anthropic's API has no ignore_eos
    streamed = tenanted.stream_lines("/v1/messages", {"model": default_model.NAME, "max_tokens": 5000, "stream": True,
                                                      "messages": [{"role": "user", "content": "hi"}]},
                                     headers={"x-api-key": DELTA_KEY})
    assert streamed[-2:] == ["event: error", 'data: {"type":"error","error":{"type":"timeout_error",'
                                             '"message":"the request ran past its 0.5 s request timeout"}}']
    # another tenant's request of the same length runs on under server.yml's 600 s
    assert tenanted.post("/v1/completions", {"prompt": "hi", "max_tokens": 400, "ignore_eos": True},
                         headers={"x-api-key": ALPHA_KEY}).status_code == 200


def test_a_reload_adds_and_removes_keys_while_requests_run(tenanted, tmp_path):
    tenants: Tenants = tenanted.app.state.tenants
    before = tenants.ring
    listed = tmp_path / "tenants.yml"
    listed.write_text(yaml.safe_dump({"tenants": [{"name": "gamma", "api_key_hashes": [key_hash(GAMMA_KEY)]}]}))
    body = {"model": OTHER_MODEL, "prompt": "hi", "stream": True, "max_tokens": 300, "ignore_eos": True}
    try:
        with tenanted.http.stream("POST", "/v1/completions", json=body, headers=keyed(BETA_KEY)) as running:
            assert running.status_code == 200
            tenants.reload(ServerConfig(tenants_file=str(listed)))
            assert generate_status(tenanted, GAMMA_KEY) == 200
            assert generate_status(tenanted, BETA_KEY) == 401
            lines = [line for line in running.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and '"finish_reason":"length"' in lines[-2]
        listed.write_text("tenants: [{name: gamma}]")  # a broken file: the keys before stay
        tenants.reload(ServerConfig(tenants_file=str(listed)))
        assert generate_status(tenanted, GAMMA_KEY) == 200
    finally:
        tenants.ring = before


def tenant_samples(frontend, name: str) -> dict:
    text = frontend.http.get("/metrics", headers=keyed(ALPHA_KEY)).text
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def test_each_tenants_requests_tokens_429s_timeouts_and_latencies_are_counted_under_its_name(tenanted):
    names = ("llm_tenant_requests_total", "llm_tenant_tokens_total", "llm_tenant_rate_limited_total",
             "llm_tenant_request_timeouts_total", "llm_tenant_time_to_first_token_seconds_count",
             "llm_tenant_e2e_request_latency_seconds_count")
    before = {name: tenant_samples(tenanted, name) for name in names}
    # every configured tenant's series exist at 0 before it sends anything
    assert {labels for labels in before["llm_tenant_requests_total"]} >= {(("tenant", name),)
                                                                           for name in ("alpha", "beta", "delta")}
    tenanted.engine.cached_tokens = 2
    answer = tenanted.post("/v1/completions", {"prompt": "hello there", "max_tokens": 2, "ignore_eos": True},
                           headers=keyed(ALPHA_KEY)).json()
    assert tenanted.post("/v1/completions", {"prompt": "hi", **LONG}, headers=keyed(DELTA_KEY)).status_code == 504
    body = {"model": OTHER_MODEL, "prompt": "hi", "stream": True, **LONG}
    with tenanted.http.stream("POST", "/v1/completions", json=body, headers=keyed(BETA_KEY)):
        assert tenanted.post("/v1/completions", body, headers=keyed(BETA_KEY)).status_code == 429
    tenanted.wait(lambda: tenanted.nothing_left(), 10, "the stream to end")
    after = {name: tenant_samples(tenanted, name) for name in names}

    def grew(name: str, **labels) -> float:
        key = tuple(sorted(labels.items()))
        return after[name][key] - before[name].get(key, 0)

    assert grew("llm_tenant_requests_total", tenant="alpha") == 1
    assert grew("llm_tenant_tokens_total", tenant="alpha", kind="prompt") == answer["usage"]["prompt_tokens"] - 2
    assert grew("llm_tenant_tokens_total", tenant="alpha", kind="cached") == 2
    assert grew("llm_tenant_tokens_total", tenant="alpha", kind="output") == 2
    assert grew("llm_tenant_time_to_first_token_seconds_count", tenant="alpha") == 1
    assert grew("llm_tenant_e2e_request_latency_seconds_count", tenant="alpha") == 1
    assert grew("llm_tenant_request_timeouts_total", tenant="delta", stage="running") == 1
    assert grew("llm_tenant_rate_limited_total", tenant="beta", limit="max_concurrent") == 1
    assert grew("llm_tenant_requests_total", tenant="beta") == 1  # the stream; not the one turned away
