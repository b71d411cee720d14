"""/tokenize, /detokenize, /version, CORS, stop_reason and the reasoning split, end to end: through
nginx to the real engine, on one service started with an API key, a CORS origin and deepseek_r1.

The tiny model's weights are random and never think on their own, so the reasoning tests constrain
the output with a regex that writes the markers; the split is then the server's doing alone.
"""
import re

import httpx
import pytest
from openai import OpenAI

from common import default_model
from tests.conftest import running_service

API_KEY = "text-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORIGIN = "https://app.example.com"
MESSAGES = [{"role": "user", "content": "Say something."}]
WORDS = "[a-z ]{3,20}"


@pytest.fixture(scope="module")
def service(model_dir):
    server = {"api_key": API_KEY, "reasoning_parser": "deepseek_r1", "cors": {"allowed_origins": [ORIGIN]},
              "trust_request_chat_template": True}
    with running_service("text-api", frontends=1, server=server) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(service):
    return OpenAI(base_url=service.url + "/v1", api_key=API_KEY, max_retries=0)


def test_tokenize_and_detokenize_a_prompt_round_trip(http, tokenizer):
    answer = http.post("/tokenize", json={"prompt": "hello world", "return_token_strs": True}).json()
    assert answer == {"count": 5, "max_model_len": 8192, "tokens": tokenizer.encode("hello world"),
                      "token_strs": ["he", "l", "lo", "Ġwor", "ld"]}
    assert http.post("/detokenize", json={"tokens": answer["tokens"]}).json() == {"prompt": "hello world"}
    plain = http.post("/tokenize", json={"prompt": "hello world", "model": default_model.NAME}).json()
    assert "token_strs" not in plain and plain["tokens"] == answer["tokens"]


def test_tokenize_messages_as_chat_renders_them(http, openai_client):
    answer = http.post("/tokenize", json={"messages": MESSAGES}).json()
    text = http.post("/detokenize", json={"tokens": answer["tokens"]}).json()["prompt"]
    assert text == "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    # The same prompt chat completions sends to the engine.
    completion = openai_client.chat.completions.create(model=default_model.NAME, messages=MESSAGES, max_tokens=1)
    assert completion.usage.prompt_tokens == answer["count"]
    continued = http.post("/tokenize", json={
        "messages": [*MESSAGES, {"role": "assistant", "content": "Well"}],
        "add_generation_prompt": False, "continue_final_message": True}).json()
    text = http.post("/detokenize", json={"tokens": continued["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\nWell")


@pytest.mark.parametrize("route, body, status, field", [
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": MESSAGES}, 400, "messages"),
    ("/tokenize", {"messages": []}, 400, "messages"),
    ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, 400, "continue_final_message"),
    ("/tokenize", {"prompt": "a", "model": "another"}, 404, "model"),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ raise_exception('no') }}"}, 400, "chat_template"),
    ("/tokenize", {"messages": MESSAGES, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}}]},
     400, "tools[0].function.parameters"),
    ("/detokenize", {"tokens": [1, 8192]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens[0]"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
])
def test_bad_input_is_a_4xx_naming_the_field(http, route, body, status, field):
    response = http.post(route, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field
    assert http.post("/tokenize", json={"prompt": "still fine"}).status_code == 200


def test_version_says_this_build_and_vllm(http):
    answer = http.get("/version").json()
    assert answer["version"] == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", answer["vllm_version"])


def test_a_preflight_is_answered_without_the_api_key(service):
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    response = httpx.options(service.url + "/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "access-control-allow-credentials" not in response.headers
    # An origin not in server.yml is refused, as Starlette's CORSMiddleware does for vllm serve.
    elsewhere = {**headers, "Origin": "https://evil.example"}
    response = httpx.options(service.url + "/v1/chat/completions", headers=elsewhere)
    assert response.status_code == 400 and "access-control-allow-origin" not in response.headers


def test_answers_to_an_allowed_origin_carry_its_header(service):
    response = httpx.get(service.url + "/v1/models", headers={**AUTH, "Origin": ORIGIN})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    # The page can read why it was turned away.
    response = httpx.get(service.url + "/v1/models", headers={"Origin": ORIGIN})
    assert response.status_code == 401 and response.headers["access-control-allow-origin"] == ORIGIN


def forced(text: str) -> dict:
    return {"structured_outputs": {"regex": re.escape(text)}}


def test_stop_reason_names_the_stop_string(http, openai_client):
    body = {"prompt": "hi", "max_tokens": 40, "stop": ["lazy"], **forced("the quick lazy dog")}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("the quick ", "stop", "lazy")
    # The thinking (deepseek_r1 on this service) ends at once.
    chat = openai_client.chat.completions.create(model=default_model.NAME, messages=MESSAGES, max_tokens=40,
                                                 stop=["lazy"], extra_body=forced("</think>the quick lazy dog"))
    assert chat.choices[0].message.content == "the quick "
    assert chat.choices[0].model_extra["stop_reason"] == "lazy"
    chunks = list(openai_client.chat.completions.create(
        model=default_model.NAME, messages=MESSAGES, max_tokens=40, stop=["lazy"], stream=True,
        extra_body=forced("</think>the quick lazy dog")))
    assert [chunk.choices[0].model_extra["stop_reason"] for chunk in chunks][-1] == "lazy"
    assert all(chunk.choices[0].model_extra["stop_reason"] is None for chunk in chunks[:-1])


def test_stop_reason_names_the_stop_token_id(http, tokenizer):
    stop_id = tokenizer.encode("the")[0]
    body = {"prompt": "hi", "max_tokens": 10, "temperature": 0, "stop_token_ids": [stop_id],
            "logit_bias": {str(stop_id): 100}}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    # As vLLM, the stop token's own text is left out.
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("", "stop", stop_id)
    with_it = http.post("/v1/completions", json={**body, "include_stop_str_in_output": True}).json()
    assert with_it["choices"][0]["text"] == "the"
    streamed = [line for line in http.post("/v1/completions", json={**body, "stream": True}).text.splitlines()
                if line.startswith("data: {")]
    assert '"stop_reason":%d' % stop_id in streamed[-1]
    chat = http.post("/v1/chat/completions", json={**body, "messages": MESSAGES}).json()["choices"][0]
    assert (chat["finish_reason"], chat["stop_reason"]) == ("stop", stop_id)


def test_no_stop_reason_at_the_length_limit(http):
    choice = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True}).json()
    assert (choice["choices"][0]["finish_reason"], choice["choices"][0]["stop_reason"]) == ("length", None)


@pytest.mark.parametrize("pattern", [f"<think>{WORDS}</think>{WORDS}", f"{WORDS}</think>{WORDS}"])
def test_reasoning_is_split_from_the_answer(openai_client, pattern):
    request = dict(model=default_model.NAME, messages=MESSAGES, max_tokens=100, temperature=0,
                   extra_body={"structured_outputs": {"regex": pattern}})
    message = openai_client.chat.completions.create(**request).choices[0].message
    reasoning, content = message.model_extra["reasoning_content"], message.content
    assert re.fullmatch(WORDS, reasoning) and re.fullmatch(WORDS, content), (reasoning, content)
    assert message.model_extra["reasoning"] == reasoning
    chunks = list(openai_client.chat.completions.create(**request, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert "".join(delta.model_extra.get("reasoning_content") or "" for delta in deltas) == reasoning
    assert "".join(delta.content or "" for delta in deltas) == content
    # No delta ever shows a piece of a marker.
    assert not any("<" in (delta.content or "") + (delta.model_extra.get("reasoning_content") or "")
                   for delta in deltas)


def test_unfinished_thinking_is_all_reasoning(openai_client):
    message = openai_client.chat.completions.create(
        model=default_model.NAME, messages=MESSAGES, max_tokens=100,
        extra_body={"structured_outputs": {"regex": WORDS}}).choices[0].message
    assert re.fullmatch(WORDS, message.model_extra["reasoning_content"]) and message.content is None


def test_json_output_is_not_taken_for_thinking(openai_client):
    message = openai_client.chat.completions.create(
        model=default_model.NAME, messages=MESSAGES, max_tokens=100,
        response_format={"type": "json_object"}).choices[0].message
    assert message.content and message.model_extra.get("reasoning_content") is None


def test_a_template_that_closes_the_thinking_makes_the_output_answer(openai_client):
    # As Qwen3's template with enable_thinking false, or DeepSeek-V3.1's non-thinking mode.
    template = "{% for m in messages %}{{ m.content }}\n{% endfor %}<think>\n\n</think>\n\n"
    message = openai_client.chat.completions.create(
        model=default_model.NAME, messages=MESSAGES, max_tokens=100,
        extra_body={"chat_template": template, "structured_outputs": {"regex": WORDS}}).choices[0].message
    assert re.fullmatch(WORDS, message.content) and message.model_extra.get("reasoning_content") is None
