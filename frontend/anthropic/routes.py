"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, answered whole or
streamed as Anthropic's events, every failure in Anthropic's error shape."""
import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from frontend.anthropic.messages import (
    MessageBuilder, as_chat, check_bounds, check_tools, sampling_of, tool_plan,
)
from frontend.anthropic.protocol import CountTokens, CountTokensRequest, MessagesRequest
from frontend.http import HTTPError, json_response, read_json
from frontend.media import chat_prompt, taken_images
from frontend.run.answer import respond
from frontend.run.choices import chat_choices
from frontend.run.generation import GenerationSpec
from frontend.run.state import FrontendState
from frontend.text.chat_template import chat_prompt_ids

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def anthropic_route(path: str, handler) -> Route:
    """A POST route that answers other methods with its own 405. Its errors, that 405 included, take
    Anthropic's shape from the app's handlers (frontend/error_shapes.py), as its path says."""

    async def endpoint(request: Request) -> Response:
        if request.method != "POST":
            raise HTTPError(405, f"{request.method} is not allowed here: use POST", headers={"Allow": "POST"})
        return await handler(request)

    return Route(path, endpoint, methods=ANY_METHOD)


async def read_request(request: Request, kind: type):
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, kind, state.server.max_body_bytes)
    pool, model = state.pool_for(body.model)
    check_bounds(body, state.server.limits)
    return state, pool, body, model


def checked_chat(body: CountTokensRequest, max_schema_depth: int):
    """A worker thread's work: it grows with the body."""
    check_tools(body, max_schema_depth)
    return as_chat(body)


def prepare(body: MessagesRequest, tool_parser: str, max_schema_depth: int):
    """The chat and the tool plan."""
    return as_chat(body), tool_plan(body, tool_parser, max_schema_depth)


async def create_message(request: Request) -> Response:
    state, pool, body, model = await read_request(request, MessagesRequest)
    limits = state.server.limits
    chat, plan = await asyncio.to_thread(prepare, body, state.server.tool_parser, limits.max_schema_depth)
    prompt_ids, images = await chat_prompt(pool, chat, state.server)
    pool.check_context(len(prompt_ids), body.max_tokens)
    spec = GenerationSpec(prompt_ids, sampling_of(body, plan.grammar), body.stop_sequences or [], images=images)
    choices = chat_choices(state.server, pool, plan, prompt_ids, 1)
    return await respond(request, pool, [spec], choices, MessageBuilder(model, len(prompt_ids)), body.stream)


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens exactly as /v1/messages would count them: the same chat template run."""
    state, pool, body, _ = await read_request(request, CountTokensRequest)
    chat = await asyncio.to_thread(checked_chat, body, state.server.limits.max_schema_depth)
    taken_images(pool, chat)  # counted as their image tokens, not fetched
    prompt_ids = await chat_prompt_ids(pool.tokenizer, chat, state.server)
    return json_response(CountTokens(len(prompt_ids)))


ANTHROPIC_ROUTES = [
    anthropic_route("/v1/messages", create_message),
    anthropic_route("/v1/messages/count_tokens", count_tokens),
]
