"""OpenAI's request and response bodies as msgspec Structs: /v1/completions, /v1/chat/completions,
/v1/models.

Requests take OpenAI's fields and vLLM's extras (top_k, ignore_eos, …) side by side, as vLLM's own
server does; fields this server does not know are ignored, so newer SDKs keep working.
"""
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# The chat's own shapes are OpenAI's: they live with the chat template, and are taken from there.
from frontend.text.chat import (
    Chat, ChatMessage, FunctionCall, FunctionDefinition, MessageToolCall, ContentPart, Tool,  # noqa: F401 (re-exported)
)

Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
# Inside the vocabulary is checked against the tokenizer (frontend.request_bounds).
TokenId = Annotated[int, Meta(ge=0)]
# vLLM's own server takes seeds in int64; choice i of n gets seed + i (frontend.request_bounds).
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


class StreamOptions(msgspec.Struct):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extra: usage in every chunk


class JsonSchemaFormat(msgspec.Struct):
    name: str = "response"
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(msgspec.Struct, omit_defaults=True):
    """vLLM's `structured_outputs` extra: exactly one constraint."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class SamplingRequest(msgspec.Struct, kw_only=True):
    """What completions and chat share: the model, choices, streaming and sampling."""

    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extras
    top_k: Annotated[int, Meta(ge=-1, le=2**31 - 1)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    min_tokens: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    bad_words: list[str] | None = None
    allowed_token_ids: list[TokenId] | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's: the request's priority class, by its place in priority.classes (frontend/priorities.py)
    priority: int | None = None


class CompletionRequest(SamplingRequest, kw_only=True):
    # A text, several texts, token ids, or several lists of token ids.
    prompt: str | list[str | int | list[int]]
    max_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 16
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None
    add_special_tokens: bool = True


class FunctionName(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: FunctionName
    type: Literal["function"] = "function"


class ChatCompletionRequest(SamplingRequest, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None  # refused unless server.yml's trust_request_chat_template


# Responses. Fields without a default are always written, as null where OpenAI writes null.


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0  # found in the prefix cache


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


class CompletionLogprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    # vLLM's extra: the stop string or stop token id that ended the choice; null for EOS or length.
    stop_reason: int | str | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob]


class CalledFunction(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: CalledFunction


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    # The thinking, when server.yml names a reasoning_parser: under vLLM's name (`reasoning`) and
    # under the name DeepSeek's API and earlier vLLM use.
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class StreamedFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: StreamedFunction | None = None


class ChatDelta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "llm-serving"
    root: str
    parent: str | None = None  # a LoRA adapter's base model, as vLLM shows it
    max_model_len: int


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
                 PromptTokensDetails(cached_tokens))


def cached_tokens(choices: list, prompts: int = 1) -> int:
    """The prompt tokens found in the prefix cache: of each prompt, its choices' largest figure (n
    choices a prompt, prompt by prompt)."""
    n = max(len(choices) // max(prompts, 1), 1)
    return sum(max((choice.cached_tokens for choice in choices[i:i + n]), default=0)
               for i in range(0, len(choices), n))


def as_chat(body) -> Chat:
    """The chat a request's fields describe, for the chat template: chat completions' and /tokenize's,
    which name them alike."""
    return Chat(messages=body.messages, tools=body.tools, add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message, chat_template=body.chat_template,
                chat_template_kwargs=body.chat_template_kwargs)
