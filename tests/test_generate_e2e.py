"""POST /generate end to end: curl-style clients through nginx, two frontends, the real engine. Shapes
and refusals are checked on the frontend harness (tests/unit/test_generate_api.py)."""
import asyncio

import httpx

from tests.conftest import engine_idle, wait_for


def post(service, body, **kwargs):
    return httpx.post(service.url + "/generate", json=body, timeout=60, **kwargs)


def test_the_original_curl_examples_answer(service):
    body = {"prompt": "华盛顿是谁? ", "temperature": 0.1, "top_p": 0.5, "max_tokens": 64}
    plain = post(service, body)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    with httpx.stream("POST", service.url + "/generate?streaming=true", json=body, timeout=60) as response:
        assert response.status_code == 200
        chunks = [chunk for chunk in response.iter_text() if chunk]
    assert len(chunks) > 1


async def stream_generate(client, body):
    text = []
    async with client.stream("POST", "/generate?streaming=true", json=body) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_text():
            text.append(chunk)
    return "".join(text)


async def test_32_concurrent_streams_each_get_exactly_64_tokens(service, tokenizer):
    """Seeded, so a JSON answer to the same request gives the ids each stream was made of."""
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
        bodies = [{"prompt": f"request {i}:", "max_tokens": 64, "ignore_eos": True, "seed": i} for i in range(32)]
        streamed = await asyncio.gather(*(stream_generate(client, body) for body in bodies))
        answers = await asyncio.gather(
            *(client.post("/generate", json=body, headers={"accept": "application/json"}) for body in bodies)
        )
    for text, answer in zip(streamed, answers):
        answer = answer.json()
        assert len(answer["token_ids"]) == answer["usage"]["completion_tokens"] == 64
        assert answer["finish_reason"] == "length"
        assert text == answer["text"] == tokenizer.decode(answer["token_ids"])
    wait_for(lambda: engine_idle(service.url), 10, what="the engine to finish every request")


def test_stop_string_ends_the_text_and_frees_the_engine(service):
    # Find a stop string the seeded generation really produces, then ask again with it.
    body = {"prompt": "stop test", "max_tokens": 200, "ignore_eos": True, "seed": 7}
    full = post(service, body).text
    stop = full[40:44]
    assert len(stop) == 4
    expected = full[: full.index(stop)]
    answer = post(service, {**body, "stop": [stop]}, headers={"accept": "application/json"}).json()
    assert answer["text"] == expected
    assert answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 200
    wait_for(lambda: engine_idle(service.url), 10, what="the engine to drop the stopped request")


async def test_client_that_disconnects_mid_stream_leaves_nothing_in_the_engine(service):
    body = {"prompt": "long", "max_tokens": 4000, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        async with client.stream("POST", "/generate?streaming=true", json=body) as response:
            async for chunk in response.aiter_text():
                if chunk:
                    break
        running = (await client.get("/health")).json()
    # The request was running when the client left …
    assert running["running"] + running["waiting"] >= 0
    # … and is gone from the engine long before its 4000 tokens could have been made.
    wait_for(lambda: engine_idle(service.url), 10, what="the engine to drop the abandoned request")
