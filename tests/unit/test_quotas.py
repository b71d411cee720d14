"""Tenants' quotas (frontend/quotas.py): the minute's arithmetic over every engine's report, and the 429
each protocol answers on the frontend harness once the engine's LoadReport says a quota is used up."""
import asyncio
import time

import anthropic
import openai
import pytest

from common.messages import LoadReport, TenantUse
from frontend.quotas import counted_tokens, fleet_use, quota_refusal
from frontend.tenants import Tenant, key_hash

MINUTE = 29_000_000  # some minute of 2025
NOW = MINUTE * 60 + 45.5  # 14.5 s before it ends
LIMITED = Tenant("batch", requests_per_minute=10, tokens_per_minute=1000)


def report(engine: str, minute: int, **usage: TenantUse) -> LoadReport:
    return LoadReport(engine, 1, 0, 0, 0, 0, 0, usage_minute=minute, usage=usage)


def test_the_fleets_use_is_every_engines_report_of_this_minute():
    reports = [report("e0", MINUTE, batch=TenantUse(2, 100, 50, 30), other=TenantUse(9, 9, 9, 9)),
               report("e1", MINUTE, batch=TenantUse(1, 10, 0, 5)),
               report("e2", MINUTE - 1, batch=TenantUse(50, 5000, 0, 0))]  # the minute before: spent
    assert fleet_use(reports, "batch", MINUTE) == TenantUse(3, 110, 50, 35)
    assert fleet_use(reports, "nobody", MINUTE) == TenantUse()
    assert counted_tokens(TenantUse(3, 110, 50, 35), 0.1) == 150  # 110 + 35 + 5
    assert counted_tokens(TenantUse(0, 0, 1, 0), 0.1) == 1  # a part of a token counts whole


def test_under_its_quotas_a_tenant_is_served_and_one_without_quotas_always():
    reports = [report("e0", MINUTE, batch=TenantUse(9, 900, 0, 99))]
    assert quota_refusal(LIMITED, reports, 0.1, NOW) is None
    assert quota_refusal(Tenant("free"), [report("e0", MINUTE, free=TenantUse(10**6, 10**9))], 0.1, NOW) is None


@pytest.mark.parametrize("use, spent", [
    (TenantUse(10, 0, 0, 0), "its 10 requests a minute (used 10)"),
    (TenantUse(1, 900, 0, 100), "its 1000 tokens a minute (used 1000)"),
    (TenantUse(1, 500, 3000, 200), "its 1000 tokens a minute (used 1000)"),  # 3000 cached count 300
    (TenantUse(10, 2000, 0, 0), "its 10 requests a minute (used 10) and 1000 tokens a minute (used 2000)"),
])
def test_a_quota_used_up_is_a_429_until_the_minute_turns(use, spent):
    error = quota_refusal(LIMITED, [report("e0", MINUTE, batch=use)], 0.1, NOW)
    assert error.status == 429
    assert error.message == f"the tenant 'batch' has used {spent}; the next minute starts in 15 s"
    assert error.headers["Retry-After"] == "15"
    assert error.headers["x-ratelimit-limit-tokens"] == "1000" and error.headers["x-ratelimit-reset-tokens"] == "15s"
    assert error.headers["x-ratelimit-limit-requests"] == "10"
    assert int(error.headers["x-ratelimit-remaining-requests"]) == max(10 - use.requests, 0)
    # the next minute: whole again
    assert quota_refusal(LIMITED, [report("e0", MINUTE, batch=use)], 0.1, NOW + 15) is None


BATCH_KEY, SEARCH_KEY = "sk-batch-0123456789", "sk-search-0123456789"
TENANTS = [{"name": "batch", "api_key_hashes": [key_hash(BATCH_KEY)], "tokens_per_minute": 1000},
           {"name": "search", "api_key_hashes": [key_hash(SEARCH_KEY)]}]


def test_each_protocol_answers_its_rate_limit_error_and_other_tenants_go_on(frontends):
    frontend = frontends.get(tenants=TENANTS)
    if time.time() % 60 > 55:  # the report below must hold until the last request
        time.sleep(60 - time.time() % 60)
    minute = int(time.time() // 60)
    publish = frontend.engine.report({}, usage_minute=minute, usage={"batch": TenantUse(4, 700, 0, 300)})
    asyncio.run_coroutine_threadsafe(publish, frontend.engine.loop).result(5)
    frontend.wait(lambda: frontend.state.load_reports()[0].usage_minute == minute, 5, "the report to arrive")

    refused = frontend.post("/v1/completions", {"prompt": "hi", "max_tokens": 2},
                            headers={"authorization": f"Bearer {BATCH_KEY}"})
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    generate = frontend.post("/generate", {"prompt": "hi"}, headers={"x-api-key": BATCH_KEY})
    assert generate.status_code == 429 and generate.json()["error"]["code"] == 429
    with pytest.raises(openai.RateLimitError, match="1000 tokens a minute"):
        openai.OpenAI(base_url=f"{frontend.url}/v1", api_key=BATCH_KEY, max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(anthropic.RateLimitError) as raised:
        anthropic.Anthropic(base_url=frontend.url, api_key=BATCH_KEY, max_retries=0).messages.create(
            model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    served = frontend.post("/generate", {"prompt": "hi", "max_tokens": 2}, headers={"x-api-key": SEARCH_KEY})
    assert served.status_code == 200


def test_usage_answers_report_the_prompt_tokens_found_in_the_prefix_cache(frontend):
    frontend.engine.cached_tokens = 16
    chat = frontend.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "a " * 40}],
                                                  "max_tokens": 2}).json()["usage"]
    assert chat["prompt_tokens_details"] == {"cached_tokens": 16} and chat["prompt_tokens"] > 16
    # two prompts, n=2: each prompt's cached tokens once
    completions = frontend.post("/v1/completions", {"prompt": ["a " * 40, "b " * 40], "n": 2, "max_tokens": 2})
    assert completions.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    streamed = frontend.stream_lines("/v1/completions", {"prompt": "a " * 40, "max_tokens": 2, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    assert '"prompt_tokens_details":{"cached_tokens":16}' in streamed[-2]
    responses = frontend.post("/v1/responses", {"input": "a " * 40, "max_output_tokens": 2}).json()["usage"]
    assert responses["input_tokens_details"]["cached_tokens"] == 16
    message = anthropic.Anthropic(base_url=frontend.url, api_key="unused", max_retries=0).messages.create(
        model="tiny-llama", max_tokens=2, messages=[{"role": "user", "content": "a " * 40}])
    assert message.usage.cache_read_input_tokens == 16
    # Anthropic's input_tokens leave out what was read from the cache
    assert message.usage.input_tokens + 16 == chat["prompt_tokens"]
