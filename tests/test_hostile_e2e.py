"""Hostile requests through nginx on the real engine: a flood of requests the frontends refuse (the
bodies of tests/unit/test_hostile_input.py's table, where each refusal is checked on the frontend
harness) leaves no request in flight and the service whole; and the failure counters and vLLM's own
series are there to watch; and litellm, streaming a forced tool call cut by a small max_tokens, gets no
JSON as content (LangChain and the raw HTTP of such cuts: on the frontend harness)."""
import asyncio
import json

import httpx

from common import default_model
from tests.conftest import wait_for
from tests.unit.test_hostile_input import CHAT, GEN, HOSTILE, WEATHER

MODEL = default_model.NAME


def in_flight(service) -> list[int]:
    return [httpx.get(service.frontend_url(i) + "/health", timeout=5).json()["in_flight"]
            for i in range(service.server["frontends"])]


def assert_service_whole(service) -> None:
    wait_for(lambda: in_flight(service) == [0] * service.server["frontends"], 15, what="no request in flight")
    answer = httpx.post(service.url + GEN, json={"prompt": "still fine", "max_tokens": 3, "ignore_eos": True},
                        headers={"accept": "application/json"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(service.url + "/health", timeout=5).status_code == 200


FLOOD = [row for row in HOSTILE if isinstance(row[2], dict) and len(json.dumps(row[2])) < 2_000]


def test_a_flood_of_refused_requests_leaves_no_request_in_flight(service):
    async def flood():
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            async def one(i):
                _, route, body, _ = FLOOD[i % len(FLOOD)]
                async with limit:
                    answer = await client.post(route, content=json.dumps(body),
                                               headers={"content-type": "application/json"})
                return answer.status_code

            return await asyncio.gather(*(one(i) for i in range(2_000)))

    statuses = asyncio.run(flood())
    assert set(statuses) == {400}
    assert_service_whole(service)


def test_litellm_streaming_with_a_small_max_tokens_gets_no_json_content(service):
    import litellm

    chunks = litellm.completion(model="openai/" + MODEL, api_base=service.url + "/v1", api_key="unused",
                                messages=CHAT, tools=[WEATHER], tool_choice="required", max_tokens=10, seed=3,
                                stream=True)
    content, finish_reasons = [], []
    for chunk in chunks:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish_reasons.append(choice.finish_reason)
    assert "".join(content) == ""
    assert "length" in finish_reasons


def test_every_failure_counter_exists_and_vllm_series_carry_the_served_name(service):
    metrics = httpx.get(service.url + "/metrics", timeout=10).text
    for reason in ("engine_lost", "engine_refused", "request_timeout"):
        assert f'llm_requests_failed_total{{model="{MODEL}",reason="{reason}"}}' in metrics
    for reason in ("stop", "length"):
        assert f'llm_requests_finished_total{{finish_reason="{reason}",model="{MODEL}"}}' in metrics
    vllm_lines = [line for line in metrics.splitlines() if line.startswith("vllm:") and "model_name=" in line]
    assert vllm_lines and all(f'model_name="{MODEL}"' in line for line in vllm_lines)
