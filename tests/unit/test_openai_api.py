"""The OpenAI-compatible routes on the frontend harness, through the real `openai` package: answer and
stream shapes, token counts, n, stop strings, logprobs, tool calls as the frontend renders them from
the text the scripted engine writes, and every refusal in OpenAI's error shape."""
import json

import openai
import pytest
from openai import OpenAI

from common import default_model
from common.config import ServerConfig
from frontend.http import HTTPError

MODEL = default_model.NAME
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
CALL = '{"city": "Paris", "days": 3}'


@pytest.fixture
def client(frontend) -> OpenAI:
    return OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=30, http_client=frontend.http)


def chat_prompt_tokens(tokenizer, messages, tools=None) -> int:
    return len(tokenizer.hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True)["input_ids"])


def streamed_message(chunks) -> tuple[dict, str]:
    """The assistant message as {"content", "tool_calls"} from a stream's deltas, and its finish reason."""
    content, calls, finish_reason = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": delta.id, "name": delta.function.name, "arguments": ""})
                call["arguments"] += delta.function.arguments or ""
            finish_reason = choice.finish_reason or finish_reason
    return {"content": content or None, "tool_calls": [calls[i] for i in sorted(calls)] or None}, finish_reason


def test_models_list_the_served_model(client):
    assert [model.id for model in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.body["param"] == "model"


def test_completion_counts_tokens_as_the_tokenizer_does(client, tokenizer):
    prompt = "The quick brown fox"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, extra_body={"ignore_eos": True})
    [choice] = answer.choices
    assert answer.object == "text_completion"
    assert choice.finish_reason == "length" and choice.text
    assert answer.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12


def test_completion_streams_the_same_text_as_the_whole_answer(client):
    body = dict(model=MODEL, prompt="Once upon a time", max_tokens=20, seed=11, extra_body={"ignore_eos": True})
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_counts_tokens_as_the_template_and_tokenizer_do(client, tokenizer):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=10,
                                            extra_body={"ignore_eos": True})
    [choice] = answer.choices
    assert answer.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert answer.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert answer.usage.completion_tokens == 10


def test_chat_streams_the_same_text_as_the_whole_answer(client):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=24, seed=3, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_sse_stream_ends_with_done(frontend):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    with frontend.http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] <= 4


def test_chat_accepts_every_role_and_text_parts(client, tokenizer):
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"city": "Oslo", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                            max_tokens=4, extra_body={"ignore_eos": True})
    assert answer.choices[0].message.tool_calls is None
    expected = [{**m, "content": "What is the weather?"} if m["role"] == "user" else m for m in messages]
    assert answer.usage.prompt_tokens == chat_prompt_tokens(tokenizer, expected, TOOLS)


def test_n_2_gives_two_choices_seeded_seed_and_seed_plus_1(client, frontend):
    both = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, seed=5, n=2,
                                          extra_body={"ignore_eos": True})
    assert sorted(choice.index for choice in both.choices) == [0, 1]
    assert both.usage.completion_tokens == 16
    assert sorted(add.sampling["seed"] for add in frontend.engine.added[-2:]) == [5, 6]


def test_n_2_streams_both_choices(client):
    stream = client.completions.create(model=MODEL, prompt="Two ways:", n=2, max_tokens=10, seed=1, stream=True,
                                       extra_body={"ignore_eos": True})
    finished = {choice.index: choice.finish_reason for chunk in stream for choice in chunk.choices
                if choice.finish_reason}
    assert finished == {0: "length", 1: "length"}


def test_client_that_leaves_a_streamed_n_2_chat_aborts_both_engine_requests(frontend):
    body = {"model": MODEL, "messages": MESSAGES, "n": 2, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    before = len(frontend.engine.added)
    with frontend.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line)
    # choice 0's first token can come out before the engine has read choice 1's ADD
    frontend.wait(lambda: len(frontend.engine.added) >= before + 2, 10, "both choices to reach the engine")
    both = [add.request_id for add in frontend.engine.added[before:before + 2]]
    frontend.wait(lambda: set(both) <= set(frontend.engine.aborted), 10, "both choices to be aborted")


def test_stop_string_ends_a_completion(client, frontend):
    frontend.engine.reply("A story: once there was a fox.")
    answer = client.completions.create(model=MODEL, prompt="A story:", max_tokens=80, stop=["fox"]).choices[0]
    assert (answer.text, answer.finish_reason, answer.model_extra["stop_reason"]) == (
        "A story: once there was a ", "stop", "fox")


def test_stop_string_never_shows_in_a_streamed_chat(client, frontend):
    frontend.engine.reply("the quick brown fox jumps over the lazy dog")
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=80, stop="jumps",
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "the quick brown fox "
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_one_entry_per_token(client, stream):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=2,
                extra_body={"ignore_eos": True})
    if stream:
        content = [entry for chunk in client.chat.completions.create(**body, stream=True) for choice in chunk.choices
                   if choice.logprobs for entry in choice.logprobs.content]
    else:
        content = client.chat.completions.create(**body).choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and entry.token and entry.bytes == list(entry.token.encode())
        assert [top.logprob for top in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                     reverse=True)
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token


def test_completion_echo_with_logprobs_covers_prompt_and_completion(client, tokenizer):
    prompt = "echo this prompt"
    choice = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, echo=True, logprobs=1,
                                       extra_body={"ignore_eos": True}).choices[0]
    assert choice.text.startswith(prompt)
    assert len(choice.logprobs.tokens) == len(tokenizer.encode(prompt)) + 4
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None for lp in choice.logprobs.token_logprobs[1:])
    assert "".join(choice.logprobs.tokens) == choice.text


# Tool calls, as rendered from the text the engine writes


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_choice_required_renders_the_calls_the_model_writes(client, frontend, stream):
    frontend.engine.reply(f'[{{"name": "get_weather", "arguments": {CALL}}}, '
                          f'{{"name": "get_time", "arguments": {{"zone": "CET"}}}}]')
    body = dict(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required", max_tokens=400)
    message, finish_reason = chat_message(client, body, stream)
    assert finish_reason == "tool_calls" and message["content"] is None
    assert [(call["name"], json.loads(call["arguments"])) for call in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"zone": "CET"})]
    assert all(call["id"].startswith("call_") for call in message["tool_calls"])
    assert frontend.engine.added[-1].sampling["structured_outputs"]["json"]["type"] == "array"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_named_tool_choice_renders_the_arguments_as_that_tool_call(client, frontend, stream):
    frontend.engine.reply(CALL)
    body = dict(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, max_tokens=400,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message, finish_reason = chat_message(client, body, stream)
    assert finish_reason == "stop"  # as OpenAI: the caller chose the function, not the model
    [call] = message["tool_calls"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris", "days": 3})
    assert frontend.engine.added[-1].sampling["structured_outputs"]["json"] == WEATHER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_auto_tool_choice_finds_hermes_calls_in_the_text(client, frontend, stream):
    frontend.engine.reply(f'Checking.\n<tool_call>{{"name": "get_weather", "arguments": {CALL}}}</tool_call>')
    body = dict(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="auto", max_tokens=400)
    message, finish_reason = chat_message(client, body, stream)
    assert finish_reason == "tool_calls"
    assert message["content"] == "Checking.\n"
    [call] = message["tool_calls"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris", "days": 3})


def test_auto_tool_choice_without_a_call_is_plain_content(client):
    answer = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, max_tokens=8,
                                            extra_body={"ignore_eos": True})
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_output_is_the_content_and_asks_the_engine_for_the_schema(client, frontend, stream):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    frontend.engine.reply('{"name": "Ada"}')
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=400,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    message, finish_reason = chat_message(client, body, stream)
    assert finish_reason == "stop" and json.loads(message["content"]) == {"name": "Ada"}
    assert frontend.engine.added[-1].sampling["structured_outputs"]["json"] == schema


def chat_message(client: OpenAI, body: dict, stream: bool) -> tuple[dict, str]:
    """The assistant message as {"content", "tool_calls"}, from a whole answer or from a stream's deltas."""
    if stream:
        return streamed_message(client.chat.completions.create(**body, stream=True))
    choice = client.chat.completions.create(**body).choices[0]
    calls = [{"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
             for call in choice.message.tool_calls or []] or None
    return {"content": choice.message.content, "tool_calls": calls}, choice.finish_reason


# Refusals


BAD_REQUESTS = [
    ("temperature below 0", dict(temperature=-1.0), openai.BadRequestError, "temperature"),
    ("unknown model", dict(model="no-such-model"), openai.NotFoundError, "model"),
    ("no messages", dict(messages=[]), openai.BadRequestError, "messages"),
    ("unknown role", dict(messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, "messages[0].role"),
    ("named tool not among tools", dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
     openai.BadRequestError, "tool_choice"),
    ("tool_choice without tools", dict(tool_choice="required"), openai.BadRequestError, "tool_choice"),
    ("over the context", dict(max_tokens=9000), openai.BadRequestError, "max_tokens"),
    ("top_logprobs without logprobs", dict(top_logprobs=2), openai.BadRequestError, "top_logprobs"),
    ("json_schema without a schema", dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     openai.BadRequestError, "response_format.json_schema"),
]


@pytest.mark.parametrize("name,change,error,param", BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_bad_chat_request_is_a_4xx_in_openais_shape(client, name, change, error, param, stream):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **change}
    with pytest.raises(error) as raised:
        client.chat.completions.create(**body, stream=stream)
    assert raised.value.body["param"] == param
    assert raised.value.body["message"]
    if error is openai.BadRequestError:
        assert raised.value.body["type"] == "invalid_request_error"


def test_engine_refusal_is_a_400_in_openais_shape(client, frontend):
    frontend.engine.refuse("min_tokens must be less than or equal to max_tokens=4, got 5.")
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"min_tokens": 5})
    assert "min_tokens" in raised.value.body["message"]


def test_error_body_is_openais_shape(frontend):
    response = frontend.post("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "n"


async def test_a_model_without_a_chat_template_cannot_chat(model_dir):
    from frontend.text.chat import Chat, ChatMessage
    from frontend.text.chat_template import chat_prompt_ids
    from frontend.text.tokenizer import Tokenizer

    tokenizer = Tokenizer(str(model_dir))
    tokenizer.hf.chat_template = None
    with pytest.raises(HTTPError) as raised:
        await chat_prompt_ids(tokenizer, Chat(messages=[ChatMessage("user", "hi")]), ServerConfig())
    assert raised.value.status == 400
    assert "chat template" in raised.value.message
