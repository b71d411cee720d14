"""Malformed requests across /generate and the OpenAI routes, on the frontend harness: each is a 4xx
whose message names the problem, never a 500, nothing of it reaches the engine, and a normal request
right after still succeeds."""
import json

import pytest

JSON = "application/json"
CHAT = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# (name, route, body (dict: sent as JSON; bytes: sent as is), content type, status, the field or words named)
CASES = [
    ("generate: array body", "/generate", b"[1, 2]", JSON, 400, "body"),
    ("generate: string body", "/generate", b'"prompt"', JSON, 400, "body"),
    ("generate: invalid JSON", "/generate", b'{"prompt": ', JSON, 400, "body"),
    ("generate: invalid UTF-8", "/generate", b'{"prompt": "\xff\xfe"}', JSON, 400, "body"),
    ("generate: body over the size limit", "/generate", b'{"prompt": "' + b"x" * 1_100_000 + b'"}', JSON, 413, ""),
    ("generate: wrong content type", "/generate", b'{"prompt": "hi"}', "text/plain", 415, "content-type"),
    ("generate: max_tokens negative", "/generate", {"prompt": "hi", "max_tokens": -1}, JSON, 400, "max_tokens"),
    ("generate: max_tokens zero", "/generate", {"prompt": "hi", "max_tokens": 0}, JSON, 400, "max_tokens"),
    ("generate: max_tokens fractional", "/generate", {"prompt": "hi", "max_tokens": 2.5}, JSON, 400, "max_tokens"),
    ("generate: max_tokens huge", "/generate", {"prompt": "hi", "max_tokens": 10**12}, JSON, 400, "max_tokens"),
    ("generate: temperature below 0", "/generate", {"prompt": "hi", "temperature": -0.1}, JSON, 400, "temperature"),
    ("generate: top_p zero", "/generate", {"prompt": "hi", "top_p": 0}, JSON, 400, "top_p"),
    ("generate: top_p above 1", "/generate", {"prompt": "hi", "top_p": 1.01}, JSON, 400, "top_p"),
    ("generate: top_k below -1", "/generate", {"prompt": "hi", "top_k": -2}, JSON, 400, "top_k"),
    ("generate: min_p above 1", "/generate", {"prompt": "hi", "min_p": 2}, JSON, 400, "min_p"),
    ("generate: prompt over the context", "/generate", {"prompt": "word " * 9000, "max_tokens": 1}, JSON, 400,
     "max_tokens"),
    ("generate: empty prompt", "/generate", {"prompt": ""}, JSON, 400, "prompt"),
    ("generate: prompt not a string", "/generate", {"prompt": 42}, JSON, 400, "prompt"),
    ("generate: unknown field", "/generate", {"prompt": "hi", "temprature": 0.5}, JSON, 400, "temprature"),
    ("generate: stop token out of vocabulary", "/generate", {"prompt": "hi", "stop_token_ids": [10**7]}, JSON, 400,
     "stop_token_ids"),
    ("completions: max_tokens zero", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, JSON, 400, "max_tokens"),
    ("completions: n zero", "/v1/completions", {"prompt": "hi", "n": 0}, JSON, 400, "n"),
    ("completions: n too large", "/v1/completions", {"prompt": "hi", "n": 1000}, JSON, 400, "n"),
    ("completions: temperature below 0", "/v1/completions", {"prompt": "hi", "temperature": -1}, JSON, 400,
     "temperature"),
    ("completions: prompt over the context", "/v1/completions", {"prompt": "word " * 9000}, JSON, 400, "max_tokens"),
    ("completions: missing prompt", "/v1/completions", {"max_tokens": 5}, JSON, 400, "prompt"),
    ("completions: logprobs too many", "/v1/completions", {"prompt": "hi", "logprobs": 50}, JSON, 400, "logprobs"),
    ("completions: invalid JSON", "/v1/completions", b"{nope", JSON, 400, "body"),
    ("chat: empty messages", "/v1/chat/completions", {"messages": []}, JSON, 400, "messages"),
    ("chat: unknown role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, JSON, 400,
     "role"),
    ("chat: messages not a list", "/v1/chat/completions", {"messages": "hi"}, JSON, 400, "messages"),
    ("chat: max_completion_tokens negative", "/v1/chat/completions",
     {"messages": CHAT, "max_completion_tokens": -3}, JSON, 400, "max_completion_tokens"),
    ("chat: top_p zero", "/v1/chat/completions", {"messages": CHAT, "top_p": 0}, JSON, 400, "top_p"),
    ("chat: tool with an invalid schema", "/v1/chat/completions",
     {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, JSON, 400, "tools"),
    ("chat: tool_choice names no such tool", "/v1/chat/completions",
     {"messages": CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, JSON, 400,
     "tool_choice"),
    ("chat: wrong content type", "/v1/chat/completions", json.dumps({"messages": CHAT}).encode(),
     "application/x-www-form-urlencoded", 415, "content-type"),
]


@pytest.mark.parametrize("name,route,body,content_type,status,named", CASES, ids=[case[0] for case in CASES])
def test_bad_request_is_a_4xx_naming_the_problem(frontend, name, route, body, content_type, status, named):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = len(frontend.engine.added)
    answer = frontend.http.post(route, content=content, headers={"content-type": content_type})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"]
    assert error["param"] == named or named in error["message"], error
    assert len(frontend.engine.added) == sent, "nothing reached the engine"
    after = frontend.post("/generate", {"prompt": "still fine", "max_tokens": 3, "ignore_eos": True},
                          headers={"accept": JSON})
    assert after.status_code == 200
    assert after.json()["usage"]["completion_tokens"] == 3
