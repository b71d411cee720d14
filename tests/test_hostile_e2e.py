"""Hostile requests through nginx on the real engine: integers the wire cannot carry, token ids
outside the vocabulary, schemas nested past any stack, request chat templates, floods of stop
strings, prompts and messages. Each is a 400 naming the field, answered at once, while a normal
stream beside them runs to its end; afterwards every frontend holds no request.

Also: tool calls cut by max_tokens, as raw HTTP and as LangChain and litellm see them."""
import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from common import default_model
from tests.conftest import wait_for

MODEL = default_model.NAME
VOCAB = 8192  # the embedded model's tokenizer
CHAT = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth // 2):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def deep_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def tool_with(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


DEEP = deep_json(50_000)
STOPS_75K = ["s%d" % i for i in range(75_000)]
LOOP_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

GEN, CMPL, CHAT_ROUTE = "/generate", "/v1/completions", "/v1/chat/completions"

# (name, route, body: a dict sent as JSON or a str sent as is, the field the 400 names)
HOSTILE = [
    # 1: integers the wire cannot carry
    ("generate: seed 2**64", GEN, {"prompt": "hi", "seed": 2**64}, "seed"),
    ("generate: seed 2**63 (over int64)", GEN, {"prompt": "hi", "seed": 2**63}, "seed"),
    ("generate: seed below int64", GEN, {"prompt": "hi", "seed": -(2**63) - 1}, "seed"),
    ("generate: logit_bias key 10**23", GEN, {"prompt": "hi", "logit_bias": {str(10**23): 1}}, "logit_bias"),
    ("generate: top_k 2**64", GEN, {"prompt": "hi", "top_k": 2**64}, "top_k"),
    ("generate: min_tokens 2**64", GEN, {"prompt": "hi", "min_tokens": 2**64}, "min_tokens"),
    ("completions: seed 2**63-1 with n=2", CMPL, {"prompt": "hi", "seed": 2**63 - 1, "n": 2}, "seed"),
    ("completions: seed 2**64", CMPL, {"prompt": "hi", "seed": 2**64}, "seed"),
    ("completions: logit_bias key 10**23", CMPL, {"prompt": "hi", "logit_bias": {str(10**23): 1}}, "logit_bias"),
    ("completions: logit_bias key not a number", CMPL, {"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
    ("completions: top_k 2**64", CMPL, {"prompt": "hi", "top_k": 2**64}, "top_k"),
    ("completions: min_tokens 2**63", CMPL, {"prompt": "hi", "min_tokens": 2**63}, "min_tokens"),
    ("completions: max_tokens 2**64", CMPL, {"prompt": "hi", "max_tokens": 2**64}, "max_tokens"),
    ("chat: seed 2**64-1 with n=2", CHAT_ROUTE, {"messages": CHAT, "seed": 2**64 - 1, "n": 2}, "seed"),
    ("chat: seed 2**63-1 with n=2", CHAT_ROUTE, {"messages": CHAT, "seed": 2**63 - 1, "n": 2}, "seed"),
    ("chat: seed below int64", CHAT_ROUTE, {"messages": CHAT, "seed": -(2**63) - 1}, "seed"),
    ("chat: logit_bias key 10**23", CHAT_ROUTE, {"messages": CHAT, "logit_bias": {str(10**23): 1}}, "logit_bias"),
    ("chat: top_k 2**64", CHAT_ROUTE, {"messages": CHAT, "top_k": 2**64}, "top_k"),
    # 2: token ids
    ("generate: stop_token_ids 2**64", GEN, {"prompt": "hi", "stop_token_ids": [2**64]}, "stop_token_ids"),
    ("generate: allowed_token_ids 2**64", GEN, {"prompt": "hi", "allowed_token_ids": [2**64]}, "allowed_token_ids"),
    ("generate: stop_token_ids negative", GEN, {"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids[0]"),
    ("generate: logit_bias key past the vocabulary", GEN, {"prompt": "hi", "logit_bias": {str(VOCAB): 1}},
     "logit_bias"),
    ("completions: prompt token id negative", CMPL, {"prompt": [1, -1]}, "prompt"),
    ("completions: prompt token id 2**32", CMPL, {"prompt": [2**32]}, "prompt"),
    ("completions: prompt token id 10**23", CMPL, {"prompt": [[1, 2], [10**23]]}, "prompt"),
    ("completions: prompt token id past the vocabulary", CMPL, {"prompt": [VOCAB]}, "prompt"),
    ("completions: allowed_token_ids past the vocabulary", CMPL, {"prompt": "hi", "allowed_token_ids": [VOCAB]},
     "allowed_token_ids"),
    ("chat: stop_token_ids 2**32", CHAT_ROUTE, {"messages": CHAT, "stop_token_ids": [2**32]}, "stop_token_ids"),
    # 3: depth
    ("chat: tool parameters 200 deep", CHAT_ROUTE,
     {"messages": CHAT, "tools": [tool_with(nested_schema(200))], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ("chat: response_format 50,000 deep", CHAT_ROUTE,
     '{"messages": %s, "response_format": {"type": "json_schema", "json_schema": {"schema": %s}}}'
     % (json.dumps(CHAT), DEEP), "response_format"),
    ("chat: tool parameters 50,000 deep", CHAT_ROUTE,
     '{"messages": %s, "tools": [{"type": "function", "function": {"name": "f", "parameters": %s}}]}'
     % (json.dumps(CHAT), DEEP), "tools"),
    ("chat: response_format 200 deep", CHAT_ROUTE,
     {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": nested_schema(200)}}},
     "response_format.json_schema.schema"),
    ("completions: response_format 50,000 deep", CMPL,
     '{"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"schema": %s}}}' % DEEP,
     "response_format"),
    ("completions: structured_outputs json 200 deep", CMPL,
     {"prompt": "hi", "structured_outputs": {"json": nested_schema(200)}}, "structured_outputs.json"),
    ("completions: structured_outputs json text 200 deep", CMPL,
     {"prompt": "hi", "structured_outputs": {"json": json.dumps(nested_schema(200))}}, "structured_outputs.json"),
    ("generate: a field 50,000 deep", GEN, '{"prompt": "hi", "stop": %s}' % ("[" * 50_000 + "]" * 50_000), "stop[0]"),
    # 4: request chat templates
    ("chat: chat_template_kwargs.chat_template", CHAT_ROUTE,
     {"messages": CHAT, "chat_template_kwargs": {"chat_template": LOOP_TEMPLATE}},
     "chat_template_kwargs.chat_template"),
    ("chat: chat_template", CHAT_ROUTE, {"messages": CHAT, "chat_template": LOOP_TEMPLATE}, "chat_template"),
    # 5: per-token work a client controls
    ("generate: 75,000 stop strings", GEN, {"prompt": "hi", "stop": STOPS_75K}, "stop"),
    ("completions: 75,000 stop strings", CMPL, {"prompt": "hi", "stop": STOPS_75K}, "stop"),
    ("chat: 75,000 stop strings x n=32", CHAT_ROUTE, {"messages": CHAT, "stop": STOPS_75K, "n": 32}, "stop"),
    ("generate: a 100,000-character stop string", GEN, {"prompt": "hi", "stop": "x" * 100_000}, "stop"),
    # 6: fan-out before admission
    ("completions: 20,000 prompts x n=128", CMPL, {"prompt": [[1]] * 20_000, "n": 128}, "prompt"),
    ("completions: 20,000 text prompts", CMPL, {"prompt": ["a"] * 20_000}, "prompt"),
    ("completions: 3 prompts x n=128", CMPL, {"prompt": ["a", "b", "c"], "n": 128}, "n"),
    ("chat: 20,000 messages", CHAT_ROUTE, {"messages": [{"role": "user", "content": "a"}] * 20_000}, "messages"),
    ("chat: 1,000 tools", CHAT_ROUTE, {"messages": CHAT, "tools": [WEATHER] * 1_000}, "tools"),
    ("chat: 5,000 logit_bias entries", CHAT_ROUTE,
     {"messages": CHAT, "logit_bias": {str(i): 1 for i in range(5_000)}},
     "logit_bias"),
    # 7: validation that would otherwise run on the engine's step thread
    ("generate: 10,000 bad words", GEN, {"prompt": "hi", "bad_words": ["w%d" % i for i in range(10_000)]},
     "bad_words"),
    ("chat: an invalid response_format schema", CHAT_ROUTE,
     {"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
     "response_format.json_schema.schema"),
    # 11: a forced tool call and response_format at once
    ("chat: tool_choice required with response_format", CHAT_ROUTE,
     {"messages": CHAT, "tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
]


def send(client: httpx.Client, route: str, body) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    # The timeout is the bound: a refusal must come at once, never after a stall.
    return client.post(route, content=content, headers={"content-type": "application/json"}, timeout=15)


def stream_beside(url: str, result: dict, started: threading.Event) -> None:
    """A normal streamed completion, long enough to run through the whole table."""
    body = {"prompt": "A normal request", "max_tokens": 200, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", url + CMPL, json=body, timeout=300) as response:
        result["status"] = response.status_code
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    result["events"] = events


def in_flight(service) -> list[int]:
    return [httpx.get(service.frontend_url(i) + "/health", timeout=5).json()["in_flight"]
            for i in range(service.server["frontends"])]


def assert_service_whole(service) -> None:
    wait_for(lambda: in_flight(service) == [0] * service.server["frontends"], 15, what="no request in flight")
    answer = httpx.post(service.url + GEN, json={"prompt": "still fine", "max_tokens": 3, "ignore_eos": True},
                        headers={"accept": "application/json"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(service.url + "/health", timeout=5).status_code == 200


def test_hostile_requests_are_400s_naming_the_field_while_a_stream_runs_beside(service):
    beside: dict = {}
    started = threading.Event()
    streamer = threading.Thread(target=stream_beside, args=(service.url, beside, started))
    streamer.start()
    assert started.wait(60), "the normal stream never started"
    wrong = {}
    with httpx.Client(base_url=service.url) as client, ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda row: (row[0], row[3], send(client, row[1], row[2])), HOSTILE)
        for name, field, answer in answers:
            param = answer.json()["error"]["param"] if answer.status_code == 400 else None
            if param != field:
                wrong[name] = (answer.status_code, answer.text[:300])
    streamer.join(300)
    assert wrong == {}
    assert beside["status"] == 200 and beside["events"][-1] == "[DONE]"
    assert json.loads(beside["events"][-2])["usage"]["completion_tokens"] == 200
    assert_service_whole(service)


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


# Tool calls cut by max_tokens (11)


def forced_chat(service, stream: bool, max_tokens: int, seed: int) -> dict:
    """The tool calls, content and finish reason of a tool_choice "required" chat, whole or streamed."""
    body = {"model": MODEL, "messages": CHAT, "tools": [WEATHER], "tool_choice": "required",
            "max_tokens": max_tokens, "seed": seed, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        body.pop("stream_options")
        answer = httpx.post(service.url + CHAT_ROUTE, json=body, timeout=120).json()
        choice = answer["choices"][0]
        calls = [(call["function"]["name"], call["function"]["arguments"]) for call in choice["message"].get(
            "tool_calls") or []]
        return {"calls": calls, "content": choice["message"]["content"], "finish_reason": choice["finish_reason"],
                "tokens": answer["usage"]["completion_tokens"]}
    calls, content, finish_reason, tokens = [], [], None, None
    with httpx.stream("POST", service.url + CHAT_ROUTE, json=body, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["usage"]:
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                delta = choice["delta"]
                calls += [(call["function"]["name"], call["function"]["arguments"]) for call in delta.get(
                    "tool_calls", [])]
                if delta.get("content"):
                    content.append(delta["content"])
                finish_reason = choice["finish_reason"] or finish_reason
    return {"calls": calls, "content": "".join(content) or None, "finish_reason": finish_reason, "tokens": tokens}


@pytest.fixture(scope="module")
def several_calls(service):
    """A seed under which the model makes three calls or more, and that answer uncut."""
    for seed in range(1, 40):
        whole = forced_chat(service, False, 600, seed)
        if whole["finish_reason"] == "tool_calls" and len(whole["calls"]) >= 3:
            return seed, whole
    pytest.fail("no seed in 1..39 gave three tool calls")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_calls_cut_by_max_tokens_keep_the_complete_ones(service, several_calls, stream):
    seed, whole = several_calls
    # The same seed makes the same tokens: cut a quarter from the end, inside a later call.
    cut = forced_chat(service, stream, whole["tokens"] * 3 // 4, seed)
    assert cut["finish_reason"] == "length"
    assert cut["content"] is None
    assert 1 <= len(cut["calls"]) < len(whole["calls"])
    assert cut["calls"] == whole["calls"][:len(cut["calls"])]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_call_cut_before_any_is_complete_gives_no_call_and_no_content(service, stream):
    cut = forced_chat(service, stream, 3, 1)
    assert cut == {"calls": [], "content": None, "finish_reason": "length", "tokens": 3}


def test_langchain_bind_tools_required_gets_calls_not_json_text(service):
    from langchain_openai import ChatOpenAI

    def get_weather(city: str, days: int) -> str:
        """The forecast for a city."""
        return "sunny"

    for max_tokens in (8, 400):
        model = ChatOpenAI(base_url=service.url + "/v1", api_key="unused", model=MODEL, max_tokens=max_tokens,
                           seed=3, max_retries=0)
        message = model.bind_tools([get_weather], tool_choice="required").invoke("Weather in Paris for 3 days?")
        assert message.content == ""  # None on the wire: no raw JSON as text
        assert not message.invalid_tool_calls
        assert all(call["name"] == "get_weather" for call in message.tool_calls)
        if max_tokens == 400 and message.response_metadata["finish_reason"] != "length":
            assert message.tool_calls


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
        assert f'llm_requests_failed_total{{reason="{reason}"}}' in metrics
    for reason in ("stop", "length"):
        assert f'llm_requests_finished_total{{finish_reason="{reason}"}}' in metrics
    vllm_lines = [line for line in metrics.splitlines() if line.startswith("vllm:") and "model_name=" in line]
    assert vllm_lines and all(f'model_name="{MODEL}"' in line for line in vllm_lines)
