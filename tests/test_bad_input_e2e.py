"""Malformed requests through nginx to the real engine: what nginx refuses itself (a body over the
size limit) in the API's JSON shape, and one refusal per route as the frontends answer it. Each is a
4xx whose message names the problem, and a normal request right after still succeeds. Every other
refusal is checked on the frontend harness (tests/unit/test_bad_input.py and each route's file)."""
import json

import httpx
import pytest

JSON = "application/json"

# (name, route, body (dict: sent as JSON; bytes: sent as is), content type, status, the field or words named)
CASES = [
    ("generate: body over the size limit", "/generate", b'{"prompt": "' + b"x" * 1_100_000 + b'"}', JSON, 413,
     "larger than 1048576 bytes"),
    ("generate: unknown field", "/generate", {"prompt": "hi", "temprature": 0.5}, JSON, 400, "temprature"),
    ("completions: n zero", "/v1/completions", {"prompt": "hi", "n": 0}, JSON, 400, "n"),
    ("chat: unknown role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, JSON, 400,
     "role"),
    ("chat: wrong content type", "/v1/chat/completions",
     json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "application/x-www-form-urlencoded", 415,
     "content-type"),
    ("responses: max_output_tokens zero", "/v1/responses", {"input": "hi", "max_output_tokens": 0}, JSON, 400,
     "max_output_tokens"),
    ("tokenize: neither prompt nor messages", "/tokenize", {}, JSON, 400, "prompt"),
    ("detokenize: a token outside the vocabulary", "/detokenize", {"tokens": [1, 8192]}, JSON, 400, "tokens"),
]


@pytest.mark.parametrize("name,route,body,content_type,status,named", CASES, ids=[case[0] for case in CASES])
def test_bad_request_is_a_4xx_naming_the_problem(service, name, route, body, content_type, status, named):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(service.url + route, content=content, headers={"content-type": content_type}, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["code"] == status
    assert error["param"] == named or named in error["message"], error
    after = httpx.post(service.url + "/generate", json={"prompt": "still fine", "max_tokens": 3, "ignore_eos": True},
                       headers={"accept": JSON}, timeout=60)
    assert after.status_code == 200
    assert after.json()["usage"]["completion_tokens"] == 3
