"""/tokenize, /detokenize, /version, CORS, the API key, stop_reason and the reasoning split end to end:
through nginx to the real engine, on frontends of their own (`text_api_service`: an API key, a CORS
origin, deepseek_r1) on the session's engine. Every other case of these routes and options is checked
on the frontend harness (tests/unit/test_text_api.py).

The tiny model's weights are random and never think on their own, so the reasoning test constrains
the output with a regex that writes the markers; the split is then the server's doing alone.
"""
import re

import httpx
import pytest
from openai import OpenAI

from common import default_model
from tests.conftest import TEXT_API_KEY, TEXT_API_ORIGIN

AUTH = {"Authorization": f"Bearer {TEXT_API_KEY}"}
MESSAGES = [{"role": "user", "content": "Say something."}]
WORDS = "[a-z ]{3,20}"


@pytest.fixture(scope="module")
def http(text_api_service):
    with httpx.Client(base_url=text_api_service.url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(text_api_service):
    return OpenAI(base_url=text_api_service.url + "/v1", api_key=TEXT_API_KEY, max_retries=0)


def test_tokenize_and_detokenize_a_prompt_round_trip(http, tokenizer):
    answer = http.post("/tokenize", json={"prompt": "hello world"}).json()
    assert answer == {"count": 5, "max_model_len": 8192, "tokens": tokenizer.encode("hello world")}
    assert http.post("/detokenize", json={"tokens": answer["tokens"]}).json() == {"prompt": "hello world"}


def test_version_says_this_build_and_vllm(http):
    answer = http.get("/version").json()
    assert answer["version"] == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", answer["vllm_version"])


def test_a_preflight_is_answered_without_the_api_key(text_api_service):
    headers = {"Origin": TEXT_API_ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    response = httpx.options(text_api_service.url + "/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == TEXT_API_ORIGIN
    elsewhere = {**headers, "Origin": "https://evil.example"}
    response = httpx.options(text_api_service.url + "/v1/chat/completions", headers=elsewhere)
    assert response.status_code == 400 and "access-control-allow-origin" not in response.headers


def test_the_api_key_is_required_and_health_needs_none(text_api_service):
    answer = httpx.post(text_api_service.url + "/generate", json={"prompt": "hi"}, timeout=30)
    assert answer.status_code == 401 and "API key" in answer.json()["error"]["message"]
    answer = httpx.post(text_api_service.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, headers=AUTH,
                        timeout=60)
    assert answer.status_code == 200
    assert httpx.get(text_api_service.url + "/health", timeout=10).status_code == 200


def test_stop_reason_names_the_stop_token_id(http, tokenizer):
    stop_id = tokenizer.encode("the")[0]
    body = {"prompt": "hi", "max_tokens": 10, "temperature": 0, "stop_token_ids": [stop_id],
            "logit_bias": {str(stop_id): 100}}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    # As vLLM, the stop token's own text is left out.
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("", "stop", stop_id)
    chat = http.post("/v1/chat/completions", json={**body, "messages": MESSAGES}).json()["choices"][0]
    assert (chat["finish_reason"], chat["stop_reason"]) == ("stop", stop_id)


def test_reasoning_is_split_from_the_answer(openai_client):
    request = dict(model=default_model.NAME, messages=MESSAGES, max_tokens=100, temperature=0,
                   extra_body={"structured_outputs": {"regex": f"<think>{WORDS}</think>{WORDS}"}})
    message = openai_client.chat.completions.create(**request).choices[0].message
    reasoning, content = message.model_extra["reasoning_content"], message.content
    assert re.fullmatch(WORDS, reasoning) and re.fullmatch(WORDS, content), (reasoning, content)
    chunks = list(openai_client.chat.completions.create(**request, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert "".join(delta.model_extra.get("reasoning_content") or "" for delta in deltas) == reasoning
    assert "".join(delta.content or "" for delta in deltas) == content
