"""Priority classes on the frontend harness (frontend/priorities.py): a tenant's class rides on the wire
as vLLM's priority; a request asks for a class with X-Priority (every route) or vLLM's `priority` field
(the OpenAI routes), never getting a better one than its tenant's; an unknown class or an out-of-range
priority is a 400 naming the header or the field, and reaches no engine."""
import msgspec
import pytest

from common.config import PriorityConfig, ServerConfig, load_tenants
from common.messages import Add, encode, request_decoder
from frontend.migration import Flight
from frontend.priorities import header_priority
from frontend.tenants import Tenant, key_hash

CHAT_KEY, NIGHTLY_KEY = "sk-chat-0123456789", "sk-nightly-0123456789"
TENANTS = [{"name": "chat", "api_key_hashes": [key_hash(CHAT_KEY)], "priority_class": "interactive"},
           {"name": "nightly", "api_key_hashes": [key_hash(NIGHTLY_KEY)], "priority_class": "batch"}]
INTERACTIVE, STANDARD, BATCH = 0, 1, 2
MESSAGES = [{"role": "user", "content": "hi"}]
ROUTES = {"/generate": {"prompt": "hi", "max_tokens": 2},
          "/v1/completions": {"prompt": "hi", "max_tokens": 2},
          "/v1/chat/completions": {"messages": MESSAGES, "max_tokens": 2},
          "/v1/responses": {"input": "hi", "max_output_tokens": 2},
          "/v1/messages": {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 2}}


@pytest.fixture
def classed(frontends):
    frontend = frontends.get(tenants=TENANTS)
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")


def sent_priority(frontend, route: str, key: str, body: dict | None = None, **headers) -> int:
    answer = frontend.post(route, {**ROUTES[route], **(body or {})},
                           headers={"authorization": f"Bearer {key}", **headers})
    assert answer.status_code == 200, answer.text
    return frontend.engine.added[-1].priority


@pytest.mark.parametrize("route", ROUTES)
def test_a_tenants_class_rides_on_the_wire_and_x_priority_lowers_it_on_every_route(classed, route):
    assert sent_priority(classed, route, CHAT_KEY) == INTERACTIVE
    assert sent_priority(classed, route, CHAT_KEY, **{"X-Priority": "batch"}) == BATCH
    assert sent_priority(classed, route, NIGHTLY_KEY, **{"X-Priority": "interactive"}) == BATCH  # its cap


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions", "/v1/responses"])
def test_vllms_priority_field_asks_for_a_class_by_its_place_capped_by_the_tenants(classed, route):
    assert sent_priority(classed, route, CHAT_KEY, {"priority": STANDARD}) == STANDARD
    assert sent_priority(classed, route, NIGHTLY_KEY, {"priority": INTERACTIVE}) == BATCH
    assert sent_priority(classed, route, CHAT_KEY, {"priority": INTERACTIVE}, **{"X-Priority": "batch"}) == BATCH


def test_without_keys_every_request_is_of_the_default_class(frontend):
    frontend.post("/v1/completions", {"prompt": "hi", "max_tokens": 2, "priority": INTERACTIVE})
    assert frontend.engine.added[-1].priority == STANDARD  # priority.default_class caps it too


@pytest.mark.parametrize("priority", [-1, 3, 2**64, 1e308, "batch", None])
def test_a_priority_out_of_range_is_a_400_naming_it(classed, priority):
    body = {**ROUTES["/v1/completions"], "priority": priority}
    sent = len(classed.engine.added)
    answer = classed.post("/v1/completions", body, headers={"authorization": f"Bearer {CHAT_KEY}"})
    if priority is None:  # JSON null: as if not given
        assert answer.status_code == 200
        return
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "priority", answer.text
    assert len(classed.engine.added) == sent


def test_the_out_of_range_message_lists_the_classes(classed):
    answer = classed.post("/v1/chat/completions", {**ROUTES["/v1/chat/completions"], "priority": 7},
                          headers={"authorization": f"Bearer {CHAT_KEY}"})
    assert answer.json()["error"]["message"] == ("priority must be the place of a priority class, 0 (scheduled "
                                                 "first) to 2: 0 interactive, 1 standard, 2 batch; got 7")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/messages", "/generate"])
@pytest.mark.parametrize("header", [b"urgent", b"x" * 10_000, b"", b"Interactive", b"0", b"NaN"])
def test_an_unknown_class_in_x_priority_is_a_400_in_the_routes_shape(classed, route, header):
    sent = len(classed.engine.added)
    answer = classed.post(route, ROUTES[route], headers={"authorization": f"Bearer {CHAT_KEY}", "X-Priority": header})
    assert answer.status_code == 400
    assert "X-Priority must name a priority class (0 interactive, 1 standard, 2 batch)" in answer.text
    assert len(answer.content) < 400
    assert (answer.json().get("type") == "error") == (route == "/v1/messages")  # Anthropic's shape there
    assert len(classed.engine.added) == sent


def test_the_header_is_read_as_the_class_name_around_spaces():
    tenant, error = header_priority(Tenant("t", priority=1), PriorityConfig(), b" batch ")
    assert error is None and tenant.priority == BATCH


def test_a_tenant_naming_no_class_has_the_default_one_and_an_unknown_one_is_refused():
    server = msgspec.convert({"tenants": [{"name": "a", "api_key_hashes": []}],
                              "priority": {"default_class": "batch"}}, ServerConfig)
    assert Tenant.of(server.tenants[0], server.priority).priority == BATCH
    with pytest.raises(msgspec.ValidationError, match="'urgent' is no priority class"):
        msgspec.convert({"priority": {"default_class": "urgent"}}, ServerConfig)
    wrong = msgspec.convert({"tenants": [{"name": "a", "api_key_hashes": [], "priority_class": "urgent"}]},
                            ServerConfig)
    with pytest.raises(ValueError, match="tenants: 'a''s priority_class: 'urgent' is no priority class"):
        load_tenants(wrong)


def test_the_priority_crosses_the_wire_and_a_moved_request_keeps_it():
    add = Add("r1", "fe~1", [1, 2], {"max_tokens": 5}, tenant="nightly", priority=BATCH)
    assert request_decoder.decode(encode(add)).priority == BATCH

    class Queue:
        generated = [9]

    moved = Flight(add, Queue(), pinned=False, moves=1).continuation()
    assert (moved.priority, moved.tenant, moved.prompt_token_ids) == (BATCH, "nightly", [1, 2, 9])
    pooling_add = msgspec.structs.replace(add, sampling={}, pooling={"task": "embed"})
    pooling = Flight(pooling_add, Queue(), False).continuation()
    assert pooling.priority == BATCH
