"""The dashboard's tenant table (GET /stats' `tenants`, frontend/dashboard/routes.py) on the frontend
harness: a row per configured tenant, its requests, 429s, generations in flight and TTFT p50 from the
llm_tenant_* series, and its quotas beside what the engines report it used this minute."""
import pytest

from common.messages import LoadReport, TenantUse
from frontend.dashboard.routes import tenant_row
from frontend.quotas import fleet_use
from frontend.tenants import Tenant, key_hash

CHAT_KEY, NIGHTLY_KEY = "sk-chat-dash-0123456789", "sk-nightly-dash-0123456789"
TENANTS = [{"name": "chat-dash", "api_key_hashes": [key_hash(CHAT_KEY)]},
           {"name": "nightly-dash", "api_key_hashes": [key_hash(NIGHTLY_KEY)], "requests_per_minute": 1,
            "tokens_per_minute": 5000}]


@pytest.fixture
def tenanted(frontends):
    frontend = frontends.get(tenants=TENANTS)
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")


def test_each_tenant_has_a_row_with_its_requests_limits_and_ttft(tenanted):
    chat = {"authorization": f"Bearer {CHAT_KEY}"}
    assert tenanted.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, headers=chat).status_code == 200
    answer = tenanted.http.get("/stats", headers=chat)
    assert answer.status_code == 200, answer.text
    rows = {row["name"]: row for row in answer.json()["tenants"]}
    assert set(rows) == {"chat-dash", "nightly-dash"}
    assert rows["chat-dash"]["requests"] >= 1 and rows["chat-dash"]["in_flight"] == 0
    assert rows["chat-dash"]["ttft_p50_ms"] > 0
    assert rows["nightly-dash"]["quota"] == {"requests_per_minute": 1, "tokens_per_minute": 5000}
    assert rows["nightly-dash"]["ttft_p50_ms"] is None  # no request yet


def test_a_row_adds_up_the_engines_reports_of_this_minute_against_the_quota():
    use = TenantUse(requests=3, prompt_tokens=100, cached_tokens=50, output_tokens=20)
    report = LoadReport("e", 1, 0, 0, 0, 0, 0, {}, usage_minute=7, usage={"t": use})
    row = tenant_row("t", {"llm_tenant_requests_total": 4.0}, {0.1: 1.0, 1.0: 2.0, float("inf"): 2.0},
                     Tenant("t", tokens_per_minute=1000), fleet_use([report, report], "t", 7), 0.1)
    assert row["minute"] == {"requests": 6, "prompt_tokens": 200, "cached_tokens": 100, "output_tokens": 40,
                             "tokens": 250}
    assert row["quota"] == {"requests_per_minute": 0, "tokens_per_minute": 1000}
    assert row["ttft_p50_ms"] == 100.0 and row["requests"] == 4.0 and row["rate_limited"] == 0
