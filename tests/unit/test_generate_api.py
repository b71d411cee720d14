"""POST /generate on the frontend harness (tests/unit/frontend_harness.py): the answer's shapes, stop
strings, clients that leave, and every refusal, against a scripted engine on real sockets."""
import json

import httpx
import pytest

JSON = {"content-type": "application/json"}
AS_JSON = {"accept": "application/json"}


def test_json_answer_counts_tokens(frontend, tokenizer):
    answer = frontend.post("/generate", {"prompt": "hello there", "max_tokens": 20, "ignore_eos": True},
                           headers=AS_JSON).json()
    assert answer["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": len(tokenizer.encode("hello there")), "completion_tokens": 20,
                               "total_tokens": len(tokenizer.encode("hello there")) + 20}
    assert answer["text"] == tokenizer.decode(answer["token_ids"])


def test_plain_and_streamed_answers_are_the_text(frontend):
    frontend.engine.reply("Washington was the first president.", "Washington was the first president.")
    plain = frontend.post("/generate", {"prompt": "华盛顿是谁? ", "max_tokens": 64})
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text == "Washington was the first president."
    with frontend.http.stream("POST", "/generate?streaming=true", json={"prompt": "华盛顿是谁? "}) as response:
        chunks = [chunk for chunk in response.iter_text() if chunk]
    assert len(chunks) > 1 and "".join(chunks) == plain.text


def test_stop_string_ends_the_text_and_aborts_the_engine_request(frontend):
    frontend.engine.reply("the quick brown fox jumps over the lazy dog")
    answer = frontend.post("/generate", {"prompt": "stop test", "max_tokens": 200, "stop": ["jumps"]},
                           headers=AS_JSON).json()
    assert (answer["text"], answer["finish_reason"]) == ("the quick brown fox ", "stop")
    assert answer["usage"]["completion_tokens"] < 200
    request_id = frontend.engine.added[-1].request_id
    frontend.wait(lambda: request_id in frontend.engine.aborted, 10, "the engine request to be aborted")


def test_stop_string_with_streaming_never_shows_the_stop(frontend):
    frontend.engine.reply("the quick brown fox jumps over the lazy dog")
    with frontend.http.stream("POST", "/generate?streaming=true",
                      json={"prompt": "stop test", "max_tokens": 200, "stop": "jumps"}) as response:
        chunks = list(response.iter_text())
    assert "".join(chunks) == "the quick brown fox "
    assert not any("jump" in chunk for chunk in chunks)


async def test_client_that_disconnects_mid_stream_aborts_its_engine_request(frontend):
    body = {"prompt": "long", "max_tokens": 4000, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=frontend.url, timeout=30, verify=False) as client:
        async with client.stream("POST", "/generate?streaming=true", json=body) as response:
            async for chunk in response.aiter_text():
                if chunk:
                    break
    request_id = frontend.engine.added[-1].request_id
    frontend.wait(lambda: request_id in frontend.engine.aborted, 10, "the engine request to be aborted")


def test_non_streaming_client_that_disconnects_aborts_its_engine_request(frontend):
    with pytest.raises(httpx.ReadTimeout):
        frontend.http.post("/generate", json={"prompt": "x", "max_tokens": 4000, "ignore_eos": True}, timeout=0.5)
    request_id = frontend.engine.added[-1].request_id
    frontend.wait(lambda: request_id in frontend.engine.aborted, 10, "the engine request to be aborted")


def test_engine_refusal_is_a_400_with_its_reason(frontend):
    frontend.engine.refuse("min_tokens must be less than or equal to max_tokens=2, got 5.")
    answer = frontend.post("/generate", {"prompt": "x", "max_tokens": 2, "min_tokens": 5})
    assert answer.status_code == 400
    assert "min_tokens" in answer.json()["error"]["message"]


BAD_INPUTS = [
    ("not json", b"{prompt", JSON, "body"),
    ("not an object", b"[1, 2]", JSON, "body"),
    ("unknown field", json.dumps({"prompt": "x", "temprature": 1}).encode(), JSON, "temprature"),
    ("wrong type", json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), JSON, "max_tokens"),
    ("negative max_tokens", json.dumps({"prompt": "x", "max_tokens": -5}).encode(), JSON, "max_tokens"),
    ("temperature below 0", json.dumps({"prompt": "x", "temperature": -0.5}).encode(), JSON, "temperature"),
    ("top_p above 1", json.dumps({"prompt": "x", "top_p": 1.5}).encode(), JSON, "top_p"),
    ("empty prompt", json.dumps({"prompt": ""}).encode(), JSON, "prompt"),
    ("missing prompt", json.dumps({"max_tokens": 5}).encode(), JSON, "prompt"),
    ("over the context", json.dumps({"prompt": "x", "max_tokens": 8192}).encode(), JSON, "max_tokens"),
    ("prompt over the context", json.dumps({"prompt": "word " * 9000, "max_tokens": 1}).encode(), JSON, "max_tokens"),
]


@pytest.mark.parametrize("name,body,headers,field", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_a_400_naming_the_field_and_nothing_else_changes(frontend, name, body, headers, field):
    sent = len(frontend.engine.added)
    response = frontend.http.post("/generate", content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert error["message"]
    assert len(frontend.engine.added) == sent, "nothing reached the engine"
    after = frontend.post("/generate", {"prompt": "still fine?", "max_tokens": 5, "ignore_eos": True},
                          headers=AS_JSON)
    assert after.status_code == 200
    assert after.json()["usage"]["completion_tokens"] == 5



@pytest.mark.parametrize("rank", ["1", "-1", "one"])
def test_an_engine_pin_naming_no_engine_is_a_400_naming_the_header(frontend, rank):
    answer = frontend.post("/generate", {"prompt": "pinned", "max_tokens": 2}, headers={"X-data-parallel-rank": rank})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "X-data-parallel-rank"
    assert frontend.post("/generate", {"prompt": "pinned", "max_tokens": 2},
                         headers={"X-data-parallel-rank": "0"}).status_code == 200


def test_a_wrong_method_or_path_is_answered_in_the_error_shape(frontend):
    wrong_method = frontend.http.get("/generate")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == 405
    nowhere = frontend.post("/no/such/route", {})
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == 404
