"""One engine worker and one frontend over real ZeroMQ sockets, no nginx: the handshake, the
frontend that starts before the engine, and generation through the frontend's own port."""
import httpx
import pytest

from tests.conftest import Deployment, health, is_healthy, wait_for


@pytest.fixture(scope="module")
def pair(model_dir):
    deployment = Deployment("pair", frontends=1)
    try:
        deployment.start("-m", "frontend", "--index", "0", log="frontend")
        deployment.waiting_answer = wait_for(lambda: health(deployment.frontend_url(0)), 60, what="the frontend")
        deployment.refused = httpx.post(deployment.frontend_url(0) + "/generate", json={"prompt": "x"}, timeout=10)
        deployment.start("-m", "engine_worker", log="engine")
        wait_for(lambda: is_healthy(deployment.frontend_url(0)), 180, 0.5, "the frontend to turn healthy")
        yield deployment
    finally:
        deployment.close()


def test_frontend_started_before_the_engine_is_unhealthy_then_turns_healthy(pair):
    assert pair.waiting_answer.status_code == 503
    assert pair.waiting_answer.json()["status"] == "engine unavailable"
    answer = health(pair.frontend_url(0))
    assert answer.status_code == 200
    assert answer.json()["engine"]


def test_request_before_the_engine_is_up_gets_503_with_retry_after(pair):
    assert pair.refused.status_code == 503
    assert pair.refused.headers["retry-after"] == "1"
    assert "engine" in pair.refused.json()["error"]["message"]


def test_generation_over_real_sockets(pair, tokenizer):
    answer = httpx.post(
        pair.frontend_url(0) + "/generate",
        json={"prompt": "hello", "max_tokens": 12, "ignore_eos": True},
        headers={"accept": "application/json"},
        timeout=60,
    ).json()
    assert answer["usage"] == {"prompt_tokens": len(tokenizer.encode("hello")), "completion_tokens": 12,
                               "total_tokens": len(tokenizer.encode("hello")) + 12}
    assert answer["text"]


def test_same_seed_same_text(pair):
    body = {"prompt": "seeded", "max_tokens": 20, "ignore_eos": True, "seed": 42, "temperature": 1.0}
    first = httpx.post(pair.frontend_url(0) + "/generate", json=body, timeout=60).text
    second = httpx.post(pair.frontend_url(0) + "/generate", json=body, timeout=60).text
    assert first == second


def test_engine_refusal_is_a_400_with_vllm_reason(pair):
    response = httpx.post(pair.frontend_url(0) + "/generate",
                          json={"prompt": "x", "max_tokens": 2, "min_tokens": 5}, timeout=30)
    assert response.status_code == 400
    assert "min_tokens" in response.json()["error"]["message"]
