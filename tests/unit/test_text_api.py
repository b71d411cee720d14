"""/tokenize, /detokenize, /version, CORS, the API key, stop_reason and the reasoning split on the
frontend harness, with server.yml's api_key, cors, reasoning_parser and trust_request_chat_template set
as a deployment would set them; the scripted engine writes the text a thinking model would."""
import re

import pytest
from openai import OpenAI

from common import default_model

API_KEY = "text-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORIGIN = "https://app.example.com"
MESSAGES = [{"role": "user", "content": "Say something."}]
MODEL = default_model.NAME


@pytest.fixture
def text_api(frontends):
    frontend = frontends.get(api_key=API_KEY, reasoning_parser="deepseek_r1",
                             cors={"allowed_origins": [ORIGIN]}, trust_request_chat_template=True)
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")


@pytest.fixture
def http(text_api):
    with text_api.client(headers=AUTH) as client:
        yield client


@pytest.fixture
def openai_client(text_api):
    return OpenAI(base_url=text_api.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30, http_client=text_api.http)


def test_tokenize_and_detokenize_a_prompt_round_trip(http, tokenizer):
    answer = http.post("/tokenize", json={"prompt": "hello world", "return_token_strs": True}).json()
    assert answer == {"count": 5, "max_model_len": 8192, "tokens": tokenizer.encode("hello world"),
                      "token_strs": ["he", "l", "lo", "Ġwor", "ld"]}
    assert http.post("/detokenize", json={"tokens": answer["tokens"]}).json() == {"prompt": "hello world"}
    plain = http.post("/tokenize", json={"prompt": "hello world", "model": MODEL}).json()
    assert "token_strs" not in plain and plain["tokens"] == answer["tokens"]


def test_tokenize_messages_as_chat_renders_them(http, openai_client):
    answer = http.post("/tokenize", json={"messages": MESSAGES}).json()
    text = http.post("/detokenize", json={"tokens": answer["tokens"]}).json()["prompt"]
    assert text == "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    # The same prompt chat completions sends to the engine.
    completion = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
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


def test_a_preflight_is_answered_without_the_api_key(text_api):
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    response = text_api.http.options("/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "access-control-allow-credentials" not in response.headers
    # An origin not in server.yml is refused, as Starlette's CORSMiddleware does for vllm serve.
    elsewhere = {**headers, "Origin": "https://evil.example"}
    response = text_api.http.options("/v1/chat/completions", headers=elsewhere)
    assert response.status_code == 400 and "access-control-allow-origin" not in response.headers


def test_answers_to_an_allowed_origin_carry_its_header(text_api):
    response = text_api.http.get("/v1/models", headers={**AUTH, "Origin": ORIGIN})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    # The page can read why it was turned away.
    response = text_api.http.get("/v1/models", headers={"Origin": ORIGIN})
    assert response.status_code == 401 and response.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-key"}, {"authorization": API_KEY},
                                     {"x-api-key": "wrong-key"}],
                         ids=["no key", "wrong key", "no Bearer", "wrong x-api-key"])
def test_api_key_is_required(text_api, headers):
    answer = text_api.http.post("/generate", json={"prompt": "hi"}, headers=headers)
    assert answer.status_code == 401
    assert "API key" in answer.json()["error"]["message"]


def test_either_header_carries_the_key_and_health_needs_none(text_api):
    for headers in (AUTH, {"x-api-key": API_KEY}):
        answer = text_api.http.post("/generate", json={"prompt": "hi", "max_tokens": 2}, headers=headers)
        assert answer.status_code == 200
    assert text_api.http.get("/health").status_code == 200


def test_stop_reason_names_the_stop_string(http, openai_client, text_api):
    text_api.engine.reply("the quick lazy dog", "</think>the quick lazy dog", "</think>the quick lazy dog")
    body = {"prompt": "hi", "max_tokens": 40, "stop": ["lazy"]}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("the quick ", "stop", "lazy")
    # The thinking (deepseek_r1 on this frontend) ends at once.
    chat = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, stop=["lazy"])
    assert chat.choices[0].message.content == "the quick "
    assert chat.choices[0].model_extra["stop_reason"] == "lazy"
    chunks = list(openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40,
                                                        stop=["lazy"], stream=True))
    assert [chunk.choices[0].model_extra["stop_reason"] for chunk in chunks][-1] == "lazy"
    assert all(chunk.choices[0].model_extra["stop_reason"] is None for chunk in chunks[:-1])


def test_stop_reason_names_the_stop_token_id(http, text_api, tokenizer):
    stop_id = tokenizer.encode("the")[0]
    body = {"prompt": "hi", "max_tokens": 10, "temperature": 0, "stop_token_ids": [stop_id]}
    for _ in range(4):
        text_api.engine.reply_ids([stop_id])
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


@pytest.mark.parametrize("text", ["<think>the sea is wide</think>it is calm", "the sea is wide</think>it is calm"],
                         ids=["opened", "unopened"])
def test_reasoning_is_split_from_the_answer(openai_client, text_api, text):
    text_api.engine.reply(text, text)
    request = dict(model=MODEL, messages=MESSAGES, max_tokens=100)
    message = openai_client.chat.completions.create(**request).choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == ("the sea is wide", "it is calm")
    assert message.model_extra["reasoning"] == "the sea is wide"
    chunks = list(openai_client.chat.completions.create(**request, stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert "".join(delta.model_extra.get("reasoning_content") or "" for delta in deltas) == "the sea is wide"
    assert "".join(delta.content or "" for delta in deltas) == "it is calm"
    # No delta ever shows a piece of a marker.
    assert not any("<" in (delta.content or "") + (delta.model_extra.get("reasoning_content") or "")
                   for delta in deltas)


def test_unfinished_thinking_is_all_reasoning(openai_client, text_api):
    text_api.engine.reply("the sea is wide")
    message = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100).choices[0].message
    assert message.model_extra["reasoning_content"] == "the sea is wide" and message.content is None


def test_json_output_is_not_taken_for_thinking(openai_client, text_api):
    text_api.engine.reply('{"sea": "wide"}')
    message = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100,
                                                    response_format={"type": "json_object"}).choices[0].message
    assert message.content == '{"sea": "wide"}' and message.model_extra.get("reasoning_content") is None


def test_a_template_that_closes_the_thinking_makes_the_output_answer(openai_client, text_api):
    # As Qwen3's template with enable_thinking false, or DeepSeek-V3.1's non-thinking mode.
    template = "{% for m in messages %}{{ m.content }}\n{% endfor %}<think>\n\n</think>\n\n"
    text_api.engine.reply("it is calm")
    message = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100,
                                                    extra_body={"chat_template": template}).choices[0].message
    assert message.content == "it is calm" and message.model_extra.get("reasoning_content") is None
