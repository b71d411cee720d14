"""Hostile requests on the frontend harness: integers the wire cannot carry, token ids outside the
vocabulary, schemas nested past any stack, request chat templates, floods of stop strings, prompts and
messages. Each is a 400 naming the field, answered at once, none reaches the engine, while a normal
stream beside them runs to its end; afterwards the frontend holds no request.

Also: tool calls cut by max_tokens, as raw HTTP and as LangChain sees them, from a reply the scripted
engine writes as a grammar would make the model write it."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from common import default_model

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
    ("completions: priority 1e308", CMPL, {"prompt": "hi", "priority": 1e308}, "priority"),
    ("completions: priority -1", CMPL, {"prompt": "hi", "priority": -1}, "priority"),
    ("chat: priority 2**64", CHAT_ROUTE, {"messages": CHAT, "priority": 2**64}, "priority"),
    ("chat: priority a 10 KB class name", CHAT_ROUTE, {"messages": CHAT, "priority": "b" * 10_000}, "priority"),
    ("completions: priority NaN (not JSON)", CMPL, '{"prompt": "hi", "priority": NaN}', "body"),
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
    # 12: images, to the embedded model, which takes none (tests/unit/test_images.py: to a vision model)
    ("chat: an image_url for a text-only model", CHAT_ROUTE,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a.example/x.png"}}]}]},
     "messages[0].content[0].image_url"),
    ("chat: 500 images for a text-only model", CHAT_ROUTE,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}] * 500}]},
     "messages[0].content[0].image_url"),
    # 11: a forced tool call and response_format at once
    ("chat: tool_choice required with response_format", CHAT_ROUTE,
     {"messages": CHAT, "tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
]


def send(client: httpx.Client, route: str, body) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    # The timeout is the bound: a refusal must come at once, never after a stall.
    return client.post(route, content=content, headers={"content-type": "application/json"}, timeout=15)


def stream_beside(client: httpx.Client, max_tokens: int, result: dict, started: threading.Event) -> None:
    """A normal streamed completion, long enough to run through the whole table."""
    body = {"prompt": "A normal request", "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    events = []
    with client.stream("POST", CMPL, json=body, timeout=300) as response:
        result["status"] = response.status_code
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    result["events"] = events


def test_hostile_requests_are_400s_naming_the_field_while_a_stream_runs_beside(frontend):
    beside: dict = {}
    started = threading.Event()
    streamer = threading.Thread(target=stream_beside, args=(frontend.http, 1000, beside, started))
    streamer.start()
    assert started.wait(30), "the normal stream never started"
    sent = len(frontend.engine.added)
    wrong = {}
    with frontend.client() as client, ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda row: (row[0], row[3], send(client, row[1], row[2])), HOSTILE)
        for name, field, answer in answers:
            param = answer.json()["error"]["param"] if answer.status_code == 400 else None
            if param != field:
                wrong[name] = (answer.status_code, answer.text[:300])
    assert len(frontend.engine.added) == sent, "a hostile request reached the engine"
    streamer.join(120)
    assert wrong == {}
    assert beside["status"] == 200 and beside["events"][-1] == "[DONE]"
    assert json.loads(beside["events"][-2])["usage"]["completion_tokens"] == 1000


# Tool calls cut by max_tokens (11)

THREE_CALLS = "[" + ", ".join(
    f'{{"name": "get_weather", "arguments": {{"city": "{city}", "days": {days}}}}}'
    for city, days in (("Paris", 1), ("Oslo", 2), ("Lima", 3))) + "]"


def forced_chat(frontend, stream: bool, max_tokens: int) -> dict:
    """The tool calls, content and finish reason of a tool_choice "required" chat, whole or streamed."""
    frontend.engine.reply(THREE_CALLS)
    body = {"model": MODEL, "messages": CHAT, "tools": [WEATHER], "tool_choice": "required",
            "max_tokens": max_tokens, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        body.pop("stream_options")
        answer = frontend.post(CHAT_ROUTE, body).json()
        choice = answer["choices"][0]
        calls = [(call["function"]["name"], call["function"]["arguments"]) for call in choice["message"].get(
            "tool_calls") or []]
        return {"calls": calls, "content": choice["message"]["content"], "finish_reason": choice["finish_reason"],
                "tokens": answer["usage"]["completion_tokens"]}
    calls, content, finish_reason, tokens = [], [], None, None
    for line in frontend.stream_lines(CHAT_ROUTE, body):
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


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_calls_cut_by_max_tokens_keep_the_complete_ones(frontend, stream):
    whole = forced_chat(frontend, stream, 600)
    assert whole["finish_reason"] == "tool_calls" and len(whole["calls"]) == 3
    # The same reply, cut a quarter from the end, inside the last call.
    cut = forced_chat(frontend, stream, whole["tokens"] * 3 // 4)
    assert cut["finish_reason"] == "length"
    assert cut["content"] is None
    assert 1 <= len(cut["calls"]) < len(whole["calls"])
    assert cut["calls"] == whole["calls"][:len(cut["calls"])]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_call_cut_before_any_is_complete_gives_no_call_and_no_content(frontend, stream):
    cut = forced_chat(frontend, stream, 3)
    assert cut == {"calls": [], "content": None, "finish_reason": "length", "tokens": 3}


def test_langchain_bind_tools_required_gets_calls_not_json_text(frontend):
    from langchain_openai import ChatOpenAI

    def get_weather(city: str, days: int) -> str:
        """The forecast for a city."""
        return "sunny"

    for max_tokens in (8, 400):
        frontend.engine.reply(THREE_CALLS)
        model = ChatOpenAI(base_url=frontend.url + "/v1", api_key="unused", model=MODEL, max_tokens=max_tokens,
                           seed=3, max_retries=0, http_client=frontend.http)
        message = model.bind_tools([get_weather], tool_choice="required").invoke("Weather in Paris for 3 days?")
        assert message.content == ""  # None on the wire: no raw JSON as text
        assert not message.invalid_tool_calls
        assert all(call["name"] == "get_weather" for call in message.tool_calls)
        if max_tokens == 400:
            assert [call["args"] for call in message.tool_calls] == [
                {"city": "Paris", "days": 1}, {"city": "Oslo", "days": 2}, {"city": "Lima", "days": 3}]

