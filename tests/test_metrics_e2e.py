"""GET /metrics end to end: real requests through nginx and to each frontend directly, on the session's
service once nothing else runs on it, the exposition read with prometheus_client's parser. What a killed
frontend or engine leaves in the figures: tests/test_faults_e2e.py, on its victim."""
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import default_model
from tests.conftest import engine_idle, has_gpu, health, wait_for

MODEL = default_model.NAME
MAX_TOKENS = 12
PROMPTS = [f"count the tokens of request number {i}" for i in range(8)]
STREAMED = {3, 7}  # which of PROMPTS go out with ?streaming=true


@pytest.fixture
def metered(service):
    """The session's service, once no request of an earlier test is left in it: the counts are exact."""
    def quiet() -> bool:
        return engine_idle(service.url) and all(health(service.frontend_url(i)).json()["in_flight"] == 0
                                                for i in range(2))

    wait_for(quiet, 30, what="no request left on the service")
    return service


def series(name: str, **labels) -> tuple:
    return name, frozenset(labels.items())


def scrape(url: str) -> dict:
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return {series(sample.name, **sample.labels): sample.value for family in families for sample in family.samples}


def scrape_vllm(url: str) -> dict:
    """The scrape with vLLM's own per-engine labels (model_name, engine) summed away."""
    summed: dict = {}
    for (name, labels), value in scrape(url).items():
        key = (name, frozenset((k, v) for k, v in labels if k not in ("model_name", "engine")))
        summed[key] = summed.get(key, 0.0) + value
    return summed


def changes(url: str, before: dict, expected: dict, read=scrape) -> dict:
    after = read(url)
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in expected}


def assert_changes(url: str, before: dict, expected: dict, timeout: float = 15, read=scrape) -> None:
    """Each series moves by exactly its expected amount. Waits first: the engine's figures arrive
    with its next heartbeat, and a request's own count lands just after its last byte."""
    try:
        wait_for(lambda: changes(url, before, expected, read) == expected, timeout, 0.3, "the expected counts")
    except AssertionError:
        pass
    assert changes(url, before, expected, read) == expected


def generate(url: str, prompt: str, streamed: bool) -> None:
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    if streamed:
        with httpx.stream("POST", url + "/generate?streaming=true", json=body, timeout=60) as response:
            assert response.status_code == 200
            response.read()
    else:
        assert httpx.post(url + "/generate", json=body, timeout=60).status_code == 200


def test_counters_match_the_requests_sent_whichever_frontend_answers(metered, tokenizer):
    before = scrape(metered.url)
    # Half the requests straight to each frontend: only service-wide counts are right on both.
    for i, prompt in enumerate(PROMPTS):
        generate(metered.frontend_url(i % 2), prompt, streamed=i in STREAMED)
    prompt_tokens = sum(len(tokenizer.encode(prompt)) for prompt in PROMPTS)
    count, generated = len(PROMPTS), len(PROMPTS) * MAX_TOKENS
    expected = {
        series("llm_http_requests_total", route="/generate", method="POST", status="200"): count,
        series("llm_requests_finished_total", model=MODEL, finish_reason="length"): count,
        series("llm_requests_aborted_total", model=MODEL): 0,
        series("llm_prompt_tokens_total", model=MODEL): prompt_tokens,
        series("llm_generation_tokens_total", model=MODEL): generated,
        series("llm_time_to_first_token_seconds_count", model=MODEL): count,
        series("llm_time_per_output_token_seconds_count", model=MODEL): count,
        series("llm_e2e_request_latency_seconds_count", model=MODEL): count,
        series("llm_requests_in_flight", model=MODEL): 0,
        series("llm_requests_queued", model=MODEL): 0,
        series("llm_engine_prompt_tokens_total", model=MODEL, engine="0"): prompt_tokens,
        series("llm_engine_generation_tokens_total", model=MODEL, engine="0"): generated,
    }
    for url in (metered.url, metered.frontend_url(0), metered.frontend_url(1)):
        assert_changes(url, before, expected)


def test_vllm_own_series_count_the_same_requests(metered, tokenizer):
    """Dashboards made for vllm serve read vLLM's vllm:* series; the engine's stat logger writes
    them beside the frontends' files, so /metrics has them, counting what was asked."""
    wait_for(lambda: engine_idle(metered.url), 30, what="the engine to go idle")
    before = scrape_vllm(metered.url)
    for i, prompt in enumerate(PROMPTS):
        generate(metered.frontend_url(i % 2), prompt, streamed=i in STREAMED)
    expected = {
        series("vllm:request_success_total", finished_reason="length"): len(PROMPTS),
        series("vllm:generation_tokens_total"): len(PROMPTS) * MAX_TOKENS,
        series("vllm:prompt_tokens_total"): sum(len(tokenizer.encode(prompt)) for prompt in PROMPTS),
        series("vllm:time_to_first_token_seconds_count"): len(PROMPTS),
        series("vllm:request_queue_time_seconds_count"): len(PROMPTS),
    }
    assert_changes(metered.frontend_url(1), before, expected, read=scrape_vllm)
    assert scrape_vllm(metered.url)[series("vllm:num_requests_running")] == 0


def test_engine_figures_and_gpu_series(metered):
    wait_for(lambda: engine_idle(metered.url), 30, what="the engine to go idle")
    metrics = scrape(metered.url)
    # One engine, rank 0: its series carry engine="0".
    assert metrics[series("llm_engine_up", model=MODEL, engine="0")] == 1
    assert metrics[series("llm_engine_running_requests", model=MODEL, engine="0")] == 0
    assert metrics[series("llm_engine_waiting_requests", model=MODEL, engine="0")] == 0
    assert 0 <= metrics[series("llm_engine_kv_cache_usage_ratio", model=MODEL, engine="0")] <= 1
    gpu_series = {name for name, _ in metrics if name.startswith("llm_gpu_")}
    if has_gpu():
        assert {"llm_gpu_utilization_ratio", "llm_gpu_memory_used_bytes", "llm_gpu_power_watts"} <= gpu_series
    else:
        assert gpu_series == set()


def test_stats_says_what_metrics_says(metered):
    wait_for(lambda: engine_idle(metered.url), 30, what="the engine to go idle")
    metrics = scrape(metered.url)
    stats = httpx.get(metered.url + "/stats", timeout=10).json()
    assert stats["tokens"]["generated"] == metrics[series("llm_generation_tokens_total", model=MODEL)]
    assert stats["tokens"]["prompt"] == metrics[series("llm_prompt_tokens_total", model=MODEL)]
    ttft_count = metrics[series("llm_time_to_first_token_seconds_count", model=MODEL)]
    assert stats["latency"]["ttft"]["counts"][-1] == ttft_count
    assert [engine["state"] for engine in stats["engines"]] == ["up"]
    assert stats["gpus"] == [] or has_gpu()


def test_refusals_aborts_and_routes_are_counted_by_path_template(metered):
    before = scrape(metered.url)
    invalid = httpx.post(metered.url + "/generate", json={"prompt": ""}, timeout=30)
    refused = httpx.post(metered.url + "/generate", json={"prompt": "x", "max_tokens": 2, "min_tokens": 5}, timeout=30)
    unknown = httpx.get(metered.url + "/no/such/page", timeout=30)
    wrong_method = httpx.get(metered.url + "/generate", timeout=30)
    model = httpx.get(metered.url + "/v1/models/tiny-llama", timeout=30)
    statuses = [answer.status_code for answer in (invalid, refused, unknown, wrong_method, model)]
    assert statuses == [400, 400, 404, 405, 200]
    # A client that leaves mid-stream: its generation is aborted, its answer had begun with 200.
    body = {"prompt": "a long one", "max_tokens": 4000, "ignore_eos": True}
    with httpx.stream("POST", metered.url + "/generate?streaming=true", json=body, timeout=60) as response:
        next(response.iter_raw())
    expected = {
        series("llm_http_requests_total", route="/generate", method="POST", status="400"): 2,
        series("llm_http_requests_total", route="/generate", method="POST", status="200"): 1,
        series("llm_http_requests_total", route="/generate", method="GET", status="405"): 1,
        series("llm_http_requests_total", route="unmatched", method="GET", status="404"): 1,
        series("llm_http_requests_total", route="/v1/models/{model:path}", method="GET", status="200"): 1,
        series("llm_requests_failed_total", model=MODEL, reason="engine_refused"): 1,
        series("llm_requests_aborted_total", model=MODEL): 1,
        series("llm_requests_finished_total", model=MODEL, finish_reason="length"): 0,
        series("llm_requests_in_flight", model=MODEL): 0,
    }
    assert_changes(metered.url, before, expected)
