"""Tenants end to end: two frontends behind nginx on the session's vLLM engine, their tenants in a
tenants_file. Two tenants served with their own keys through the OpenAI and Anthropic SDKs, an unknown
key refused in each protocol's shape, a model a tenant may not use, a tokens_per_minute quota held over
both frontends, and `python -m common.service reload` (SIGHUP to the frontends) adding a key while a
stream runs."""
import json
import subprocess
import sys
import threading
import time

import anthropic
import httpx
import openai
import pytest
import yaml

from common import default_model
from common.config import ROOT
from frontend.tenants import key_hash
from tests.conftest import frontends_on, wait_for

MODEL = default_model.NAME
ALPHA_KEY, BETA_KEY, GAMMA_KEY = "sk-alpha-e2e-0123456789", "sk-beta-e2e-0123456789", "sk-gamma-e2e-0123456789"
ALPHA = {"name": "alpha", "api_key_hashes": [key_hash(ALPHA_KEY)]}
BETA = {"name": "beta", "api_key_hashes": [key_hash(BETA_KEY)], "models": ["a-model-it-may-use"]}
GAMMA = {"name": "gamma", "api_key_hashes": [key_hash(GAMMA_KEY)]}
METERED_KEY, QUOTA = "sk-metered-e2e-0123456789", 120
METERED = {"name": "metered", "api_key_hashes": [key_hash(METERED_KEY)], "tokens_per_minute": QUOTA}


@pytest.fixture(scope="module")
def tenanted(service, tmp_path_factory):
    listed = tmp_path_factory.mktemp("tenants") / "tenants.yml"
    listed.write_text(yaml.safe_dump({"tenants": [ALPHA, BETA, METERED]}))
    # A stream of 1,000 tokens on a loaded 2-core host can see steps slower than the default stall timeout.
    with frontends_on(service, "tenants", frontends=2, tenants_file=str(listed), stall_timeout_s=60) as deployment:
        deployment.tenants_file = listed
        yield deployment


def openai_client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def anthropic_client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=60)


def test_each_tenant_is_served_with_its_own_key_and_an_unknown_key_is_a_401_in_each_shape(tenanted):
    chat = openai_client(tenanted.url, ALPHA_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 3
    # The Messages API takes no ignore_eos: greedy, so the count cannot end early on an EOS drawn at random.
    message = anthropic_client(tenanted.url, ALPHA_KEY).messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0.0})
    assert message.usage.output_tokens == 3
    with pytest.raises(openai.AuthenticationError, match="not one this server knows"):
        openai_client(tenanted.url, "sk-unknown").completions.create(model=MODEL, prompt="hi", max_tokens=3)
    with pytest.raises(anthropic.AuthenticationError, match="not one this server knows"):
        anthropic_client(tenanted.url, "sk-unknown").messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    generate = httpx.post(f"{tenanted.url}/generate", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
    assert generate.status_code == 401
    assert generate.json()["error"] == {"message": "an API key is needed: Authorization: Bearer <key>, or "
                                                   "x-api-key: <key>", "type": "authentication_error",
                                        "param": None, "code": 401}


def test_a_model_the_tenant_may_not_use_is_a_404(tenanted):
    with pytest.raises(openai.NotFoundError, match=f"the model '{MODEL}' does not exist"):
        openai_client(tenanted.url, BETA_KEY).completions.create(model=MODEL, prompt="hi", max_tokens=3)
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(tenanted.url, BETA_KEY).messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert openai_client(tenanted.url, BETA_KEY).models.list().data == []


STREAMED = 3000  # tokens: long enough to outlast the reload on an idle host, short of the stall timeout on a busy one


def test_a_reload_adds_a_key_while_a_stream_runs_and_the_stream_completes(tenanted):
    events: list[str] = []
    started = threading.Event()

    def stream():
        chunks = openai_client(tenanted.url, ALPHA_KEY).completions.create(
            model=MODEL, prompt="hi", max_tokens=STREAMED, stream=True, extra_body={"ignore_eos": True},
            stream_options={"include_usage": True})
        for chunk in chunks:
            started.set()
            events.append(chunk)

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert started.wait(60), "the stream never started"
    for index in range(2):
        assert httpx.post(f"{tenanted.frontend_url(index)}/generate", json={"prompt": "hi", "max_tokens": 2},
                          headers={"x-api-key": GAMMA_KEY}, timeout=60).status_code == 401
    tenanted.tenants_file.write_text(yaml.safe_dump({"tenants": [ALPHA, BETA, METERED, GAMMA]}))
    subprocess.run([sys.executable, "-m", "common.service", "reload"], cwd=ROOT, env=tenanted.env, check=True)
    assert streaming.is_alive(), "the stream ended before the reload: make it longer"
    for index in range(2):
        wait_for(lambda: httpx.post(f"{tenanted.frontend_url(index)}/generate", json={"prompt": "hi", "max_tokens": 2},
                                    headers={"x-api-key": GAMMA_KEY}, timeout=60).status_code == 200,
                 30, 0.5, f"frontend {index} to take the new key")
    streaming.join(600)
    assert events[-1].usage.completion_tokens == STREAMED
    assert events[-2].choices[0].finish_reason == "length"


def test_a_tokens_per_minute_quota_holds_over_both_frontends(tenanted):
    """Requests alternate between the two frontends: each admits while the engine's reports say the
    tenant is under its quota, so what is admitted stays within the quota plus what the requests
    admitted under it go on to use (each within its prompt and max_tokens: docs/tenants.md). The run
    must fall within one minute of the wall clock; on a minute's turn it starts again in the next."""
    frontends = [openai_client(tenanted.frontend_url(index), METERED_KEY) for index in range(2)]
    for attempt in range(3):
        time.sleep(60 - time.time() % 60)  # at a minute's start, with the whole budget
        minute = int(time.time() // 60)
        admitted, refused, sent = 0, None, 0
        while refused is None and sent < 40:
            try:
                answer = frontends[sent % 2].completions.create(model=MODEL, prompt="hi", max_tokens=10,
                                                                extra_body={"ignore_eos": True})
                admitted += answer.usage.total_tokens
                one_request = answer.usage.total_tokens
                sent += 1
            except openai.RateLimitError as error:
                refused = error
        if int(time.time() // 60) == minute:
            break
    else:
        pytest.fail("three minutes turned during the runs")
    assert refused is not None, f"{admitted} tokens admitted, none refused"
    assert QUOTA <= admitted <= QUOTA + 2 * one_request
    assert refused.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60
    # the other frontend refuses too, in Anthropic's shape
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(tenanted.frontend_url(1 - sent % 2), METERED_KEY).messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    # other tenants go on
    assert openai_client(tenanted.url, ALPHA_KEY).completions.create(model=MODEL, prompt="hi", max_tokens=2)


def test_usage_reports_the_prompt_tokens_vllm_found_in_its_prefix_cache(tenanted):
    prompt = "The quick brown fox jumps over the lazy dog. " * 40  # a few hundred tokens: whole blocks
    client = openai_client(tenanted.url, ALPHA_KEY)
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2).usage
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2).usage
    assert first.prompt_tokens == again.prompt_tokens
    assert 0 < again.prompt_tokens_details.cached_tokens < again.prompt_tokens
    message = anthropic_client(tenanted.url, ALPHA_KEY).messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": prompt}])
    again = anthropic_client(tenanted.url, ALPHA_KEY).messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": prompt}])
    assert again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == \
        message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_x_request_timeout_ends_a_long_stream_with_the_timeout_error_and_frees_the_engine(tenanted):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    headers = {"authorization": f"Bearer {ALPHA_KEY}", "X-Request-Timeout": "3"}
    with httpx.stream("POST", f"{tenanted.url}/v1/completions", json=body, headers=headers, timeout=120) as answer:
        assert answer.status_code == 200
        events = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert len(events) > 2  # it ran before its deadline
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("timeout", 504)
    assert error["message"] == "the request ran past its 3 s request timeout"
    assert events[-1] == "data: [DONE]"

    def engine_freed() -> bool:
        health = [httpx.get(f"{tenanted.frontend_url(index)}/health", timeout=10).json() for index in range(2)]
        return all(view["in_flight"] == 0 and view["running"] == 0 for view in health)

    wait_for(engine_freed, 30, 0.5, "the frontends and the engine to let the request go")
    metrics = httpx.get(f"{tenanted.url}/metrics", headers={"x-api-key": ALPHA_KEY}, timeout=10).text
    assert f'llm_request_timeouts_total{{model="{MODEL}",stage="running"}} 1.0' in metrics
