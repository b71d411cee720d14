"""Hostile requests to the routes added since tests/test_hostile_e2e.py's table (Responses, Messages,
count_tokens, tokenize, detokenize, version, the LoRA routes, the pooling routes, CORS preflights, the
rank header), and
generated malformed JSON schemas on every route that takes one, through nginx on the shared service.
Each is a 4xx in the route's own protocol shape naming the field, answered within the client's
timeout, while a normal stream runs beside them; afterwards every route answers a normal request and
no generation is left in flight. The LoRA routes with run-time loading on: tests/test_lora_e2e.py."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import default_model
from tests.test_hostile_e2e import assert_service_whole
from tests.unit.test_hostile_input import stream_beside
from tests.unit.test_hostile_schemas import SCHEMAS

MODEL = default_model.NAME
CHAT = [{"role": "user", "content": "Hi"}]
EVIL = "https://evil.example"
DRAFT4 = "http://json-schema.org/draft-04/schema#"
BAD_DEFS = {"$schema": DRAFT4, "type": "object", "$defs": 5}
JSON = {"content-type": "application/json"}
RANK = "X-data-parallel-rank"
FIVE_THOUSAND_DIGITS = "9" * 5000
BLOCKS_20K = [{"type": "tool_result", "tool_use_id": ""}] * 20_000  # 0.9 MB: within the body limit
PARTS_600 = [{"type": "text", "text": "a"}] * 600
IMAGE_SOURCE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
IMAGE_URL = "data:image/png;base64,iVBORw0KGgo="

RESP, MSG, COUNT, TOK, DETOK = "/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/tokenize", "/detokenize"
CHAT_ROUTE, CMPL = "/v1/chat/completions", "/v1/completions"
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


def messages(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": CHAT, **fields}


def anthropic_tool(schema) -> dict:
    return {"name": "f", "input_schema": schema}


def openai_tool(schema) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": schema}}


def preflight(origin: str) -> dict:
    return {"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type"}


# (name, method, route, headers, body: a dict sent as JSON, a str or bytes sent as is, or None,
#  status, the field the answer names: OpenAI's `param`, or in Anthropic's message)
HOSTILE = [
    # Responses
    ("responses: text.format schema with a numeric $schema", "POST", RESP, JSON,
     {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"$schema": 5}}}}, 400,
     "text.format.schema"),
    ("responses: tool parameters with a list $schema", "POST", RESP, JSON,
     {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"$schema": ["x"]}}]}, 400,
     "tools[0].parameters"),
    ("responses: draft-04 $defs of 5 with a forced call", "POST", RESP, JSON,
     {"input": "hi", "tool_choice": "required", "tools": [{"type": "function", "name": "f", "parameters": BAD_DEFS}]},
     400, "tools[0].parameters.$defs"),
    ("responses: 600 content parts in one item", "POST", RESP, JSON,
     {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}] * 600}]}, 400, "input[0]"),
    ("responses: previous_response_id", "POST", RESP, JSON, {"input": "hi", "previous_response_id": "resp_1"}, 400,
     "previous_response_id"),
    ("responses: seed 2**64", "POST", RESP, JSON, {"input": "hi", "seed": 2**64}, 400, "seed"),
    ("responses: an image input item", "POST", RESP, JSON, {"input": [{"type": "input_image"}]}, 400, "input[0].type"),
    ("responses: max_output_tokens 0", "POST", RESP, JSON, {"input": "hi", "max_output_tokens": 0}, 400,
     "max_output_tokens"),
    ("responses: text/plain", "POST", RESP, {"content-type": "text/plain"}, {"input": "hi"}, 415, "content-type"),
    ("responses: no content type", "POST", RESP, {}, {"input": "hi"}, 415, "content-type"),
    ("responses: rank 5,000 digits", "POST", RESP, {RANK: FIVE_THOUSAND_DIGITS, **JSON}, {"input": "hi"}, 400, RANK),
    # Messages
    ("messages: 20,000 tool_result blocks in one message", "POST", MSG, JSON,
     messages(messages=[{"role": "user", "content": BLOCKS_20K}]), 400, "messages[0].content"),
    ("messages: 600 system blocks", "POST", MSG, JSON, messages(system=[{"type": "text", "text": "s"}] * 600), 400,
     "system"),
    ("messages: input_schema with a numeric $schema", "POST", MSG, JSON,
     messages(tools=[anthropic_tool({"$schema": 5, "type": "object"})]), 400, "tools[0].input_schema"),
    ("messages: draft-04 $defs of 5 with tool_choice any", "POST", MSG, JSON,
     messages(tools=[anthropic_tool(BAD_DEFS)], tool_choice={"type": "any"}), 400, "tools[0].input_schema.$defs"),
    ("messages: no max_tokens", "POST", MSG, JSON, {"model": MODEL, "messages": CHAT}, 400, "max_tokens"),
    ("messages: an image block without a source type", "POST", MSG, JSON,
     messages(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]), 400,
     "messages[0].content[0].source"),
    ("messages: an image for the text-only model", "POST", MSG, JSON,
     messages(messages=[{"role": "user", "content": [{"type": "image", "source": IMAGE_SOURCE}]}]), 400,
     "messages[0].content[0].source"),
    ("responses: an input_image for the text-only model", "POST", RESP, JSON,
     {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE_URL}]}]}, 400,
     "input[0].content[0].image_url"),
    ("chat: an image_url for the text-only model", "POST", CHAT_ROUTE, JSON,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}]}, 400,
     "messages[0].content[0].image_url"),
    ("messages: no content type", "POST", MSG, {}, messages(), 415, "content-type"),
    ("messages: rank 5,000 digits", "POST", MSG, {RANK: FIVE_THOUSAND_DIGITS, **JSON}, messages(), 400, RANK),
    ("messages: rank past the engines", "POST", MSG, {RANK: "7", **JSON}, messages(), 400, RANK),
    ("messages: unknown sub-path", "POST", "/v1/messages/batches", JSON, messages(), 404, "/v1/messages/batches"),
    ("messages: GET", "GET", MSG, {}, None, 405, "GET"),
    ("messages: OPTIONS without a preflight", "OPTIONS", MSG, {}, None, 405, "OPTIONS"),
    ("messages: preflight from a foreign origin", "OPTIONS", MSG, preflight(EVIL), None, 400, "origin"),
    ("messages: POST from a foreign origin", "POST", MSG, {"origin": EVIL, **JSON}, messages(), 403, "origin"),
    ("messages: a foreign Host", "POST", MSG, {"host": "evil.example", **JSON}, messages(), 403, "host"),
    ("messages: a header line past nginx's buffers", "POST", MSG, {"x-big": "a" * 10_000, **JSON}, messages(), 400,
     None),
    # count_tokens
    ("count_tokens: input_schema with a list $schema", "POST", COUNT, JSON,
     {"model": MODEL, "messages": CHAT, "tools": [anthropic_tool({"$schema": [1], "type": "object"})]}, 400,
     "tools[0].input_schema"),
    ("count_tokens: 600 blocks in one message", "POST", COUNT, JSON,
     {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 600}]}, 400,
     "messages[0].content"),
    ("count_tokens: no messages", "POST", COUNT, JSON, {"model": MODEL}, 400, "messages"),
    ("count_tokens: text/plain", "POST", COUNT, {"content-type": "text/plain"}, {"model": MODEL, "messages": CHAT},
     415, "content-type"),
    # tokenize, detokenize, version
    ("tokenize: tool parameters with a numeric $schema", "POST", TOK, JSON,
     {"messages": CHAT, "tools": [openai_tool({"$schema": 5})]}, 400, "tools[0].function.parameters"),
    ("tokenize: 600 content parts in one message", "POST", TOK, JSON,
     {"messages": [{"role": "user", "content": PARTS_600}]}, 400, "messages[0]"),
    ("tokenize: prompt and messages", "POST", TOK, JSON, {"prompt": "a", "messages": CHAT}, 400, "messages"),
    ("tokenize: a prompt that is a number", "POST", TOK, JSON, {"prompt": 5}, 400, "prompt"),
    ("tokenize: a form body", "POST", TOK, {"content-type": "application/x-www-form-urlencoded"}, "prompt=a", 415,
     "content-type"),
    ("detokenize: a negative token", "POST", DETOK, JSON, {"tokens": [-1]}, 400, "tokens[0]"),
    ("detokenize: a token past the vocabulary", "POST", DETOK, JSON, {"tokens": [99_999]}, 400, "tokens"),
    ("detokenize: a token of 10**30", "POST", DETOK, JSON, {"tokens": [10**30]}, 400, "tokens"),
    ("version: POST", "POST", "/version", JSON, {}, 405, "POST"),
    ("version: from a foreign origin", "GET", "/version", {"origin": EVIL}, None, 403, "origin"),
    # LoRA routes, off here (no admin key, no run-time loading)
    ("load_lora_adapter: no admin key set", "POST", LOAD, JSON, {"lora_name": "x", "lora_path": "x"}, 403,
     "admin_api_key"),
    ("unload_lora_adapter: no admin key set", "POST", UNLOAD, JSON, {"lora_name": "x"}, 403, "admin_api_key"),
    # chat and completions schemas
    ("chat: response_format schema with a numeric $schema", "POST", CHAT_ROUTE, JSON,
     {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
         "$schema": 5}}}}, 400, "response_format.json_schema.schema"),
    ("chat: draft-04 $defs of 5 with tool_choice required", "POST", CHAT_ROUTE, JSON,
     {"messages": CHAT, "tools": [openai_tool(BAD_DEFS)], "tool_choice": "required"}, 400,
     "tools[0].function.parameters.$defs"),
    ("chat: 600 content parts in one message", "POST", CHAT_ROUTE, JSON,
     {"messages": [{"role": "user", "content": PARTS_600}]}, 400, "messages[0]"),
    ("completions: structured_outputs json with a list $schema", "POST", CMPL, JSON,
     {"prompt": "hi", "structured_outputs": {"json": {"$schema": ["x"]}}}, 400, "structured_outputs.json"),
    ("completions: structured_outputs json text with an object $schema", "POST", CMPL, JSON,
     {"prompt": "hi", "structured_outputs": {"json": json.dumps({"$schema": {}})}}, 400, "structured_outputs.json"),
    # pooling routes, on a service whose one model generates (tests/test_pooling_e2e.py: on pooling models)
    ("embeddings: a chat model", "POST", "/v1/embeddings", JSON, {"model": MODEL, "input": "hi"}, 400, "model"),
    ("embeddings: input a number", "POST", "/v1/embeddings", JSON, {"input": 5}, 400, "input"),
    ("embeddings: encoding_format bytes", "POST", "/v1/embeddings", JSON, {"input": "hi", "encoding_format": "bytes"},
     400, "encoding_format"),
    ("embeddings: dimensions 0", "POST", "/v1/embeddings", JSON, {"input": "hi", "dimensions": 0}, 400, "dimensions"),
    ("embeddings: no content type", "POST", "/v1/embeddings", {}, {"input": "hi"}, 415, "content-type"),
    ("pooling: task token_embed", "POST", "/pooling", JSON, {"input": "hi", "task": "token_embed"}, 400, "task"),
    ("classify: a chat model", "POST", "/classify", JSON, {"model": MODEL, "input": "hi"}, 400, "model"),
    ("score: a chat model", "POST", "/score", JSON, {"queries": "a", "documents": ["b"]}, 400, "model"),
    ("rerank: no query", "POST", "/rerank", JSON, {"documents": ["b"]}, 400, "query"),
    ("rerank: top_n -1", "POST", "/v1/rerank", JSON, {"query": "a", "documents": ["b"], "top_n": -1}, 400, "top_n"),
    ("rerank: GET", "GET", "/v1/rerank", {}, None, 405, "GET"),
    # CORS preflights and the rank header elsewhere
    ("chat: preflight from a foreign origin", "OPTIONS", CHAT_ROUTE, preflight(EVIL), None, 400, "origin"),
    ("generate: preflight from a foreign origin", "OPTIONS", "/generate", preflight(EVIL), None, 400, "origin"),
    ("chat: rank 5,000 digits", "POST", CHAT_ROUTE, {RANK: FIVE_THOUSAND_DIGITS, **JSON}, {"messages": CHAT}, 400,
     RANK),
    ("generate: rank -1", "POST", "/generate", {RANK: "-1", **JSON}, {"prompt": "hi"}, 400, RANK),
    ("chat: a foreign Host", "POST", CHAT_ROUTE, {"host": "attacker.example:7080", **JSON}, {"messages": CHAT}, 403,
     "host"),
    ("chat: POST from a foreign origin", "POST", CHAT_ROUTE, {"origin": EVIL, "content-type": "text/plain"},
     {"messages": CHAT}, 403, "origin"),
]


def send(client: httpx.Client, method: str, route: str, headers: dict, body) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    # The timeout is the bound: a refusal must come at once, never after a stall.
    return client.request(method, route, headers=headers, content=content, timeout=15)


def names_the_field(route: str, answer: httpx.Response, field: str | None) -> bool:
    """The answer is in the route's protocol shape, and names `field`."""
    body = answer.json()
    if route.startswith("/v1/messages"):
        error = body["error"]
        return body["type"] == "error" and isinstance(error["type"], str) and (field is None or field in error["message"])
    error = body["error"]
    named = error["param"] == field or (field is not None and field in error["message"])
    return error["code"] == answer.status_code and (field is None or named)


def test_hostile_requests_to_the_newer_routes_are_4xx_in_their_shape_naming_the_field(service):
    assert len(HOSTILE) >= 40
    beside: dict = {}
    started = threading.Event()
    http = httpx.Client(base_url=service.url)
    streamer = threading.Thread(target=stream_beside, args=(http, 200, beside, started))
    streamer.start()
    assert started.wait(60), "the normal stream never started"
    wrong = {}
    with httpx.Client(base_url=service.url) as client, ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda row: (row, send(client, *row[1:5])), HOSTILE)
        for (name, _, route, _, _, status, field), answer in answers:
            try:
                right = answer.status_code == status and names_the_field(route, answer, field)
            except (ValueError, KeyError, TypeError):
                right = False
            if not right:
                wrong[name] = (answer.status_code, answer.text[:300])
    streamer.join(300)
    http.close()
    assert wrong == {}
    assert beside["status"] == 200 and beside["events"][-1] == "[DONE]"
    assert_every_route_answers(service)


def test_a_uri_too_long_for_nginx_is_json_in_both_shapes(service):
    answer = httpx.get(service.url + "/v1/messages/" + "a" * 10_000, timeout=15)
    body = answer.json()
    assert answer.status_code == 414 and body["type"] == "error" and body["error"]["code"] == 414


# Generated malformed schemas on every route that takes one.

SCHEMA_ROUTES = {
    "responses text.format": lambda s: (RESP, {"input": "hi", "max_output_tokens": 2, "text": {"format": {
        "type": "json_schema", "name": "x", "schema": s}}}),
    "responses tools": lambda s: (RESP, {"input": "hi", "max_output_tokens": 2, "tool_choice": "required", "tools": [
        {"type": "function", "name": "f", "parameters": s}]}),
    "messages tools": lambda s: (MSG, messages(max_tokens=2, tools=[anthropic_tool(s)], tool_choice={"type": "any"})),
    "count_tokens tools": lambda s: (COUNT, {"model": MODEL, "messages": CHAT, "tools": [anthropic_tool(s)]}),
    "tokenize tools": lambda s: (TOK, {"messages": CHAT, "tools": [openai_tool(s)]}),
    "chat response_format": lambda s: (CHAT_ROUTE, {"messages": CHAT, "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": s}}}),
    "chat tools": lambda s: (CHAT_ROUTE, {"messages": CHAT, "max_tokens": 2, "tools": [openai_tool(s)],
                                          "tool_choice": "required"}),
    "completions structured_outputs": lambda s: (CMPL, {"prompt": "hi", "max_tokens": 2,
                                                        "structured_outputs": {"json": s}}),
}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, route=st.sampled_from(sorted(SCHEMA_ROUTES)))
def test_generated_malformed_schemas_are_never_a_5xx(service, schema, route):
    path, body = SCHEMA_ROUTES[route](schema)
    answer = httpx.post(service.url + path, json=body, timeout=60)
    assert answer.status_code < 500, answer.text[:300]
    if answer.status_code >= 400:
        assert names_the_field(path, answer, None), answer.text[:300]


def test_after_the_generated_schemas_the_service_is_whole(service):
    assert_every_route_answers(service)


NORMAL = [
    ("POST", RESP, {"model": MODEL, "input": "hi", "max_output_tokens": 3}),
    ("POST", MSG, messages(max_tokens=3)),
    ("POST", COUNT, {"model": MODEL, "messages": CHAT}),
    ("POST", TOK, {"prompt": "hello"}),
    ("POST", DETOK, {"tokens": [285, 79]}),
    ("GET", "/version", None),
    ("GET", "/v1/models", None),
    ("POST", CHAT_ROUTE, {"messages": CHAT, "max_tokens": 3}),
    ("POST", CMPL, {"prompt": "hi", "max_tokens": 3}),
]


def assert_every_route_answers(service) -> None:
    """No generation in flight, and a normal request to every route answered."""
    assert_service_whole(service)  # the frontends hold nothing; /generate and /health answer
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for method, route, body in NORMAL:
            answer = client.request(method, route, json=body)
            assert answer.status_code == 200, (route, answer.text[:300])
