"""POST /v1/embeddings (OpenAI's embeddings) and POST /pooling (vLLM's, for embedding and classifying
models), on a model whose engines run vLLM's pooling runner."""
from starlette.requests import Request
from starlette.responses import Response

from frontend.http import HTTPError, json_response, read_json, unless_disconnected
from frontend.openai.protocol import now, response_id
from frontend.pooling.inputs import as_inputs, input_ids
from frontend.pooling.protocol import (
    Embedding, EmbeddingRequest, ListResponse, PooledData, PoolingRequest, check_unserved, pooling_usage,
)
from frontend.pooling.run import pool_inputs
from frontend.pooling.vectors import answer_off_the_loop, as_encoded
from frontend.run.pool import Pool
from frontend.run.state import FrontendState


def check_dimensions(pool: Pool, dimensions: int | None) -> None:
    """`dimensions` only for a matryoshka model, and one it can shorten its vectors to."""
    if dimensions is None:
        return
    welcome = pool.client.welcome
    if not welcome.is_matryoshka:
        raise HTTPError(400, f"the model {pool.model!r} does not support matryoshka representation: its vectors "
                             "cannot be shortened, so dimensions must be left out", "dimensions")
    allowed = welcome.matryoshka_dimensions
    if dimensions > welcome.embedding_size or (allowed and dimensions not in allowed):
        accepted = f"one of {allowed}" if allowed else f"from 1 to {welcome.embedding_size}"
        raise HTTPError(400, f"dimensions must be {accepted} for {pool.model!r}; got {dimensions}", "dimensions")


async def embed(request: Request, body: EmbeddingRequest, task: str):
    """The name answered, each input's vector, and the prompt tokens in all."""
    state: FrontendState = request.app.state.frontend
    check_unserved(body)
    pool, name = state.pool_for(body.model, task)
    if task == "embed":
        check_dimensions(pool, body.dimensions)
    elif body.dimensions is not None:
        raise HTTPError(400, "dimensions applies to the embed task only", "dimensions")
    ids = await input_ids(pool, as_inputs(body.input, "input"), state.server.limits, "input",
                          body.add_special_tokens, body.truncate_prompt_tokens, body.truncation_side)
    params = {"task": task, "dimensions": body.dimensions, "use_activation": body.use_activation}
    vectors = await unless_disconnected(request, pool_inputs(pool, ids, params))
    return name, vectors, sum(map(len, ids))


async def embeddings_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, EmbeddingRequest, state.server.max_body_bytes)
    name, vectors, prompt_tokens = await embed(request, body, "embed")

    def answer(vectors, encoding_format) -> Response:
        data = [Embedding(index, as_encoded(vector, encoding_format)) for index, vector in enumerate(vectors)]
        return json_response(ListResponse(response_id("embd"), now(), name, data, pooling_usage(prompt_tokens)))

    return await answer_off_the_loop(vectors, answer, body.encoding_format)


async def pooling_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, PoolingRequest, state.server.max_body_bytes)
    task = body.task
    if task is None:
        pool, _ = state.pool_for(body.model, None)
        task = "embed" if "embed" in pool.tasks else "classify"
    name, vectors, prompt_tokens = await embed(request, body, task)

    def answer(vectors, encoding_format) -> Response:
        data = [PooledData(index, as_encoded(vector, encoding_format)) for index, vector in enumerate(vectors)]
        return json_response(ListResponse(response_id("pool"), now(), name, data, pooling_usage(prompt_tokens)))

    return await answer_off_the_loop(vectors, answer, body.encoding_format)
