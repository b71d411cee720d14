"""POST /tokenize and /detokenize, with the request and response bodies of vLLM's own server.

/tokenize takes a `prompt` (encoded as /v1/completions would) or chat `messages` (rendered with the
chat template as /v1/chat/completions would, bounded the same way). Encoding, decoding, token strings
and the answer's JSON grow with the request, so they are done on worker threads.
"""
import asyncio
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from frontend.http import HTTPError, read_json
from frontend.openai.chat import check_messages
from frontend.openai.protocol import ChatMessage, TokenId, Tool, as_chat
from frontend.request_bounds import check_count, check_token_ids
from frontend.run.pool import Pool
from frontend.run.state import FrontendState
from frontend.media import taken_images
from frontend.text.chat_template import chat_prompt_ids
from frontend.text.structured_outputs import check_schema


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """Either `prompt` or `messages`, as vLLM's TokenizeCompletionRequest and TokenizeChatRequest."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    # vLLM's default: true for a prompt; false for messages, whose template writes the special tokens.
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None


class TokenizeResponse(msgspec.Struct, omit_defaults=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(msgspec.Struct):
    prompt: str


async def tokenize_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, TokenizeRequest, state.server.max_body_bytes)
    pool, _ = state.pool_for(body.model, task=None)
    tokenizer = pool.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise HTTPError(400, "give either prompt or messages", "prompt" if body.prompt is None else "messages")
    if body.prompt is not None:
        add_special_tokens = True if body.add_special_tokens is None else body.add_special_tokens
        ids = (await tokenizer.encode_prompts([body.prompt], add_special_tokens))[0]
    else:
        ids = await chat_ids(state, pool, body)
    answer = TokenizeResponse(len(ids), pool.max_model_len, ids)
    return await asyncio.to_thread(tokenize_answer, tokenizer, answer, bool(body.return_token_strs))


async def chat_ids(state: FrontendState, pool: Pool, body: TokenizeRequest) -> list[int]:
    limits = state.server.limits
    check_messages(body.messages, limits)
    check_count(body.tools, limits.max_tools, "tools", "tools")
    if body.continue_final_message and body.add_generation_prompt:
        raise HTTPError(400, "continue_final_message and add_generation_prompt cannot both be true",
                        "continue_final_message")
    await asyncio.to_thread(check_tool_schemas, body.tools or [], limits.max_schema_depth)
    chat = as_chat(body)
    taken_images(pool, chat)  # counted as their image tokens, not fetched
    return await chat_prompt_ids(pool.tokenizer, chat, state.server, bool(body.add_special_tokens))


def check_tool_schemas(tools: list[Tool], max_depth: int) -> None:
    for index, tool in enumerate(tools):
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, max_depth, f"tools[{index}].function.parameters")


def tokenize_answer(tokenizer, answer: TokenizeResponse, token_strs: bool) -> Response:
    if token_strs:
        answer.token_strs = tokenizer.hf.convert_ids_to_tokens(answer.tokens)
    return Response(msgspec.json.encode(answer), media_type="application/json")


async def detokenize_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, DetokenizeRequest, state.server.max_body_bytes)
    pool, _ = state.pool_for(body.model, task=None)
    tokenizer = pool.tokenizer

    def detokenize() -> Response:
        check_token_ids(body.tokens, tokenizer.vocab_size, "tokens")
        text = tokenizer.decode(body.tokens, skip_special_tokens=False)
        return Response(msgspec.json.encode(DetokenizeResponse(text)), media_type="application/json")

    return await asyncio.to_thread(detokenize)
