"""POST /generate: the grps-vllm API.

Body: {"prompt": "...", "temperature": 0.1, "top_p": 0.5, "max_tokens": 4096, ...vLLM sampling
parameters}. Answer: the generated text; JSON with token counts when the client accepts
application/json; with ?streaming=true the text as it is produced, each chunk the new text.
"""
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from frontend.http import HTTPError, ImmediateStreamingResponse, error_body, read_json
from frontend.openai.protocol import Seed
from frontend.request_bounds import check_sampling
from frontend.run.answer import Answer, respond
from frontend.run.choices import Choice, Update
from frontend.run.generation import GenerationSpec
from frontend.run.pool import Pool
from frontend.run.state import FrontendState
from frontend.text.reasoning import Content

Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class GenerateRequest(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Annotated[str, Meta(min_length=1)]
    model: str | None = None  # which model's pool generates (the first when none is named)
    max_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 16
    min_tokens: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0
    temperature: Annotated[float, Meta(ge=0.0)] = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Meta(ge=-1, le=2**31 - 1)] = 0
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repetition_penalty: Annotated[float, Meta(gt=0.0)] = 1.0
    seed: Seed | None = None
    stop: str | list[str] = []
    stop_token_ids: list[Annotated[int, Meta(ge=0)]] = []
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    bad_words: list[str] = []
    allowed_token_ids: list[Annotated[int, Meta(ge=0)]] | None = None
    logit_bias: dict[int, float] | None = None


FRONTEND_ONLY = {"prompt", "model", "stop", "include_stop_str_in_output", "skip_special_tokens"}


async def generation_spec(state: FrontendState, pool: Pool, body: GenerateRequest) -> GenerationSpec:
    check_sampling(body, state.server.limits, pool.tokenizer.vocab_size)
    prompt_ids = await pool.encode(body.prompt)
    pool.check_context(len(prompt_ids), body.max_tokens)
    sampling = {
        name: getattr(body, name)
        for name in body.__struct_fields__
        if name not in FRONTEND_ONLY and getattr(body, name) is not None
    }
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return GenerationSpec(prompt_ids, sampling, stop, body.include_stop_str_in_output, body.skip_special_tokens)


async def generate_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, GenerateRequest, state.server.max_body_bytes)
    pool, _ = state.pool_for(body.model)
    spec = await generation_spec(state, pool, body)
    choice = Choice(0)
    answer = GeneratedText(choice, len(spec.prompt_token_ids), "application/json" in request.headers.get("accept", ""))
    streaming = request.query_params.get("streaming", "false").lower() in ("true", "1")
    return await respond(request, pool, [spec], [choice], answer, streaming)


class GeneratedText(Answer):
    """The text, whole: plain, or JSON with the token ids and counts (`as_json`); streamed: plain text."""

    def __init__(self, choice: Choice, prompt_tokens: int, as_json: bool):
        self.choice = choice
        self.prompt_tokens = prompt_tokens
        self.as_json = as_json

    def renderer(self) -> "TextChunks":
        return TextChunks()

    def streaming_response(self, chunks: AsyncIterator[bytes]) -> Response:
        return ImmediateStreamingResponse(chunks, media_type="text/plain; charset=utf-8")

    def whole_response(self) -> Response:
        choice = self.choice
        if not self.as_json:
            return PlainTextResponse(choice.content)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": choice.completion_tokens,
                 "total_tokens": self.prompt_tokens + choice.completion_tokens}
        return JSONResponse({"text": choice.content, "token_ids": choice.token_ids,
                             "finish_reason": choice.finish_reason, "usage": usage})


class TextChunks:
    """Updates as plain text, each chunk the new text."""

    @staticmethod
    def update(update: Update) -> list[bytes]:
        text = "".join(item.text for item in update.events if isinstance(item, Content))
        return [text.encode()] if text else []

    @staticmethod
    def last() -> list[bytes]:
        return []

    @staticmethod
    def error(error: HTTPError) -> list[bytes]:
        # The status line has gone out: the error becomes the stream's last chunk.
        return [b"\n" + msgspec.json.encode(error_body(error.status, error.message))]

    @staticmethod
    def end() -> list[bytes]:
        return []
