"""A request's own deadline (frontend/deadlines.py): X-Request-Timeout read, bounded and capped by its
tenant's timeout; past it, a 504 in the protocol's shape, the engine request aborted, and the timeout
counted by whether the request had a token yet."""
import pytest

from frontend.deadlines import request_timeout
from frontend.engine_client import RequestTimeout
from frontend.metrics import TIMEOUTS, GenerationMeter
from frontend.tenants import Tenant

TENANT = Tenant("t", request_timeout_s=30)


@pytest.mark.parametrize("header, seconds", [
    (b"2.5", 2.5), (b" 10 ", 10.0), (b"30", 30.0), (b"45", 30.0), (b"999999999", 30.0),
])
def test_the_header_shortens_the_tenants_timeout_and_never_lengthens_it(header, seconds):
    tenant, error = request_timeout(TENANT, 600.0, header)
    assert error is None and tenant.request_timeout_s == seconds and tenant.name == "t"


def test_without_a_tenants_timeout_server_ymls_is_the_cap():
    assert request_timeout(Tenant("t"), 600.0, b"9000")[0].request_timeout_s == 600.0
    assert request_timeout(TENANT, 600.0, None) == (TENANT, None)


@pytest.mark.parametrize("header", [b"1e308", b"-1", b"NaN", b"inf", b"0", b"0.0", b"", b"30s", b"1" * 5000,
                                    b"1,5", b"0x10"])
def test_a_header_that_is_no_number_of_seconds_above_0_is_a_400_naming_it(header):
    _, error = request_timeout(TENANT, 600.0, header)
    assert error.status == 400 and error.param == "X-Request-Timeout"
    assert len(error.message) < 200


def test_a_request_past_its_header_timeout_is_a_504_and_aborted_in_the_engine(frontend):
    before = TIMEOUTS.labels(frontend.state.pools[0].model, "running")._value.get()
    answer = frontend.post("/v1/completions", {"prompt": "hi", "max_tokens": 5000, "ignore_eos": True},
                           headers={"X-Request-Timeout": "0.3"})
    assert answer.status_code == 504
    assert answer.json()["error"] == {"message": "the request ran past its 0.3 s request timeout", "type": "timeout",
                                      "param": None, "code": 504}
    request_id = frontend.engine.added[-1].request_id
    frontend.wait(lambda: request_id in frontend.engine.aborted, 10, "the engine to abort the request")
    assert TIMEOUTS.labels(frontend.state.pools[0].model, "running")._value.get() == before + 1
    refused = frontend.post("/v1/messages", {"model": "tiny-llama", "max_tokens": 5,
                                             "messages": [{"role": "user", "content": "hi"}]},
                            headers={"X-Request-Timeout": "NaN"})
    assert refused.status_code == 400 and "X-Request-Timeout" in refused.json()["error"]["message"]
    assert refused.json()["type"] == "error"


def test_a_timeout_before_the_first_token_counts_as_queued():
    before = TIMEOUTS.labels("m-deadlines", "queued")._value.get()
    meter = GenerationMeter("m-deadlines", 3)
    meter.failure = RequestTimeout("the request ran past its 1 s request timeout")
    meter.end()
    assert TIMEOUTS.labels("m-deadlines", "queued")._value.get() == before + 1
