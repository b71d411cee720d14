"""POST /score, /rerank and /v1/rerank (vLLM's; /rerank in the shape Jina's and Cohere's clients read) on
a cross-encoder: each (query, document) pair is one input, tokenized as vLLM pairs them, whose
classifier's one probability is the pair's score."""
import asyncio

from starlette.requests import Request
from starlette.responses import Response

from frontend.http import HTTPError, json_response, read_json, unless_disconnected
from frontend.openai.protocol import now, response_id
from frontend.pooling.inputs import check_lengths
from frontend.pooling.protocol import (
    ListResponse, RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage, ScoreData, ScoreOptions,
    ScoreRequest, check_unserved, pooling_usage,
)
from frontend.pooling.run import pool_inputs
from frontend.request_bounds import check_count
from frontend.run.pool import Pool
from frontend.run.state import FrontendState
from frontend.text.tokenizer import Tokenizer

# vLLM's names for the two sides of /score, in the order it reads them.
SCORE_SIDES = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


def score_sides(body: ScoreRequest) -> tuple[list[str], list[str], str]:
    """The two sides as lists of texts, and the field the second side came in."""
    for first, second in SCORE_SIDES:
        one, two = getattr(body, first), getattr(body, second)
        if one is not None and two is not None:
            as_list = lambda side: [side] if isinstance(side, str) else side  # noqa: E731
            return as_list(one), as_list(two), second
    raise HTTPError(400, "give the two sides to score as queries and documents (or items, data_1 and data_2, "
                         "text_1 and text_2)", "documents")


def pairs_of(queries: list[str], documents: list[str], field: str) -> list[tuple[str, str]]:
    """One query against each document, or the two lists pair by pair, as vLLM pairs them."""
    if not queries or not documents:
        raise HTTPError(400, "both sides must hold at least one text", field)
    if len(queries) == 1:
        return [(queries[0], document) for document in documents]
    if len(queries) != len(documents):
        raise HTTPError(400, f"the two sides hold {len(queries)} and {len(documents)} texts: give one query, or as "
                             "many queries as documents", field)
    return list(zip(queries, documents))


def truncated_text(text: str, tokenizer, max_tokens: int) -> str:
    """The text cut at a character boundary to at most `max_tokens` tokens, as vLLM's
    truncate_text_to_tokens does (max_tokens_per_query, max_tokens_per_doc)."""
    while text:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        if len(encoding["input_ids"]) <= max_tokens:
            break
        text = text[:min(min(offsets[max_tokens - 1][1], offsets[max_tokens][0]), len(text) - 1)]
    return text


def pair_inputs(tokenizer: Tokenizer, pairs: list[tuple[str, str]], sep_token: bool,
                body: ScoreOptions) -> tuple[list[list[int]], list[dict]]:
    """On a worker thread: each pair's token ids and its extra pooling arguments (the position where the
    second text's token types start, for models that read them), as vLLM builds them."""
    hf = tokenizer.hf
    ids, extras = [], []
    for query, document in pairs:
        if body.max_tokens_per_query > 0:
            query = truncated_text(query, hf, body.max_tokens_per_query)
        if body.max_tokens_per_doc > 0:
            document = truncated_text(document, hf, body.max_tokens_per_doc)
        encoding = hf(text=query, text_pair=document) if sep_token else hf(text=query + document)
        pair_ids = list(encoding["input_ids"])
        if body.truncate_prompt_tokens is not None and body.truncate_prompt_tokens != -1:
            keep = body.truncate_prompt_tokens
            left = (body.truncation_side or hf.truncation_side) == "left"
            pair_ids = pair_ids[len(pair_ids) - keep:] if left and len(pair_ids) > keep else pair_ids[:keep]
        types = encoding.get("token_type_ids")
        extras.append({"extra_kwargs": {"compressed_token_type_ids": first_one(types)}} if types else {})
        ids.append(pair_ids)
    return ids, extras


def first_one(token_type_ids: list[int]) -> int:
    return next((index for index, kind in enumerate(token_type_ids) if kind == 1), len(token_type_ids))


async def scores(request: Request, body: ScoreOptions, pairs: list[tuple[str, str]], field: str):
    """The name answered, each pair's score, and the prompt tokens in all."""
    state: FrontendState = request.app.state.frontend
    check_unserved(body)
    pool, name = state.pool_for(body.model, "classify")
    check_count(pairs, state.server.limits.max_pooling_inputs, field, "pairs")
    check_scorer(pool, name)
    if body.truncate_prompt_tokens is not None and body.truncate_prompt_tokens > pool.max_model_len:
        raise HTTPError(400, f"truncate_prompt_tokens ({body.truncate_prompt_tokens}) is more than the model's "
                             f"context of {pool.max_model_len} tokens", "truncate_prompt_tokens")
    ids, extras = await asyncio.to_thread(pair_inputs, pool.tokenizer, pairs, pool.client.welcome.score_sep_token, body)
    check_lengths(ids, pool.max_model_len, state.server.limits.max_pooling_tokens, field)
    params = {"task": "classify", "use_activation": body.use_activation}
    vectors = await unless_disconnected(request, pool_inputs(pool, ids, params, extras))
    return name, [float(vector[0]) for vector in vectors], sum(map(len, ids))


def check_scorer(pool: Pool, name: str) -> None:
    classes = len(pool.client.welcome.labels)
    if classes != 1:
        raise HTTPError(400, f"the model {name[:256]!r} classifies into {classes} classes; scoring needs a "
                             "cross-encoder, with one", "model")


async def score_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, ScoreRequest, state.server.max_body_bytes)
    queries, documents, field = score_sides(body)
    name, values, prompt_tokens = await scores(request, body, pairs_of(queries, documents, field), field)
    data = [ScoreData(index, value) for index, value in enumerate(values)]
    return json_response(ListResponse(response_id("score"), now(), name, data, pooling_usage(prompt_tokens)))


async def rerank_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, RerankRequest, state.server.max_body_bytes)
    texts = [document if isinstance(document, str) else document.text for document in body.documents]
    name, values, prompt_tokens = await scores(request, body, pairs_of([body.query], texts, "documents"),
                                               "documents")
    results = [RerankResult(index, value, RerankDocument(text=text) if body.return_documents else None)
               for index, (text, value) in enumerate(zip(texts, values))]
    results.sort(key=lambda result: result.relevance_score, reverse=True)
    if 0 < body.top_n < len(results):
        results = results[:body.top_n]
    usage = RerankUsage(prompt_tokens, prompt_tokens)
    return json_response(RerankResponse(response_id("rerank"), name, usage, results))
