"""The pooling routes on the frontend harness: two fake pooling models (tests/unit/fake_engine.py's
FAKE_EMBEDDING and FAKE_CROSS_ENCODER, each a pool of one scripted engine) beside the embedded chat model.
What the answers hold, in vLLM's and OpenAI's shapes; the openai SDK reading them; and a hostile table,
each row a 4xx naming the field with nothing sent to an engine, while a stream runs beside."""
import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from openai import OpenAI

from common import default_model
from tests.unit.fake_engine import FAKE_CROSS_ENCODER, FAKE_EMBEDDING
from tests.unit.test_hostile_input import stream_beside

EMBED, RERANK, CHAT = FAKE_EMBEDDING, FAKE_CROSS_ENCODER, default_model.NAME
LIMITS = {"max_pooling_inputs": 8, "max_pooling_tokens": 200}


@pytest.fixture
def pools(frontends):
    frontend = frontends.get(models=(EMBED, RERANK), limits=LIMITS)
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engines")


def vectors_of(answer: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in answer["data"]])


def test_embeddings_answer_each_input_in_order_in_openais_shape(pools):
    answer = pools.post("/v1/embeddings", {"model": EMBED, "input": ["a cat", "a dog", "a cat"]})
    body = answer.json()
    assert answer.status_code == 200 and body["object"] == "list" and body["model"] == EMBED
    assert [(item["index"], item["object"]) for item in body["data"]] == [(0, "embedding"), (1, "embedding"),
                                                                          (2, "embedding")]
    vectors = vectors_of(body)
    assert vectors.shape == (3, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2]) and not np.array_equal(vectors[0], vectors[1])
    tokens = sum(len(pools.tokenizer.encode(text)) for text in ("a cat", "a dog", "a cat"))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}


def test_base64_token_ids_and_dimensions(pools):
    ids = pools.tokenizer.encode("a cat")
    floats = vectors_of(pools.post("/v1/embeddings", {"model": EMBED, "input": "a cat"}).json())[0]
    encoded = pools.post("/v1/embeddings", {"model": EMBED, "input": [ids], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, floats.astype("<f4"))
    short = pools.post("/v1/embeddings", {"model": EMBED, "input": ids, "dimensions": 4}).json()
    assert vectors_of(short).shape == (1, 4)
    assert pools.engine_of(EMBED).added[-1].pooling == {"task": "embed", "dimensions": 4, "use_activation": None}


def test_truncate_prompt_tokens_keeps_the_tokens_of_the_tokenizers_side(pools):
    ids = list(range(100, 140))
    answer = pools.post("/v1/embeddings", {"model": EMBED, "input": ids, "truncate_prompt_tokens": 10}).json()
    assert answer["usage"]["prompt_tokens"] == 10
    side = pools.tokenizer.hf.truncation_side
    assert pools.engine_of(EMBED).added[-1].prompt_token_ids == (ids[-10:] if side == "left" else ids[:10])
    pools.post("/v1/embeddings", {"model": EMBED, "input": ids, "truncate_prompt_tokens": 10,
                                  "truncation_side": "left"})
    assert pools.engine_of(EMBED).added[-1].prompt_token_ids == ids[-10:]


def test_the_openai_sdk_reads_embeddings(pools):
    client = OpenAI(base_url=pools.url + "/v1", api_key="unused", max_retries=0, http_client=pools.client())
    answer = client.embeddings.create(model=EMBED, input=["a", "b"])  # base64, decoded by the SDK
    assert [len(item.embedding) for item in answer.data] == [8, 8] and answer.usage.total_tokens == 2


def test_pooling_route_gives_the_models_task(pools):
    embedded = pools.post("/pooling", {"model": EMBED, "input": "a"}).json()
    assert embedded["data"][0]["object"] == "pooling" and len(embedded["data"][0]["data"]) == 8
    classified = pools.post("/pooling", {"model": RERANK, "input": ["a", "b"]}).json()
    assert [len(item["data"]) for item in classified["data"]] == [1, 1]


def test_classify_names_the_label(pools):
    answer = pools.post("/classify", {"model": RERANK, "input": ["a", "b"]}).json()
    assert [(item["label"], item["num_classes"]) for item in answer["data"]] == [("relevant", 1)] * 2
    assert all(0 < item["probs"][0] < 1 for item in answer["data"])


def test_score_pairs_one_query_with_each_document_or_pair_by_pair(pools):
    one = pools.post("/score", {"model": RERANK, "queries": "q", "documents": ["x", "y"]}).json()
    both = pools.post("/score", {"model": RERANK, "text_1": ["q", "q"], "text_2": ["x", "y"]}).json()
    assert [item["score"] for item in one["data"]] == [item["score"] for item in both["data"]]
    assert [item["object"] for item in one["data"]] == ["score", "score"]
    sent = pools.engine_of(RERANK).added[-1].prompt_token_ids
    hf = pools.tokenizer.hf
    assert sent == hf(text="q", text_pair="y")["input_ids"]


def test_rerank_sorts_by_score_and_keeps_top_n(pools):
    documents = ["a", "b", "c", {"text": "d"}]
    scores = [item["score"] for item in pools.post("/score", {"model": RERANK, "queries": "q", "documents": [
        "a", "b", "c", "d"]}).json()["data"]]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        answer = pools.post(path, {"model": RERANK, "query": "q", "documents": documents, "top_n": 3}).json()
        order = sorted(range(4), key=lambda index: -scores[index])[:3]
        assert [result["index"] for result in answer["results"]] == order
        assert [result["document"]["text"] for result in answer["results"]] == [["a", "b", "c", "d"][i] for i in order]
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] > 0


def test_an_engine_refusal_is_a_400_and_frees_every_input(pools):
    pools.engine_of(EMBED).refuse("the engine refuses this one")
    answer = pools.post("/v1/embeddings", {"model": EMBED, "input": ["a", "b", "c"]})
    assert answer.status_code == 400 and "refuses" in answer.json()["error"]["message"]


def test_chat_runs_beside_pooling(pools):
    with ThreadPoolExecutor(3) as pool:
        chat = pool.submit(pools.post, "/v1/chat/completions", {"model": CHAT, "max_tokens": 8,
                                                               "messages": [{"role": "user", "content": "hi"}]})
        embedded = [pool.submit(pools.post, "/v1/embeddings", {"model": EMBED, "input": ["a"] * 8}) for _ in range(4)]
        assert chat.result().status_code == 200 and all(answer.result().status_code == 200 for answer in embedded)


TOO_MANY_TOKENS = [[5] * 150, [5] * 60]
# (name, route, body, status, the field the answer names)
HOSTILE = [
    ("embeddings: a chat model", "/v1/embeddings", {"model": CHAT, "input": "a"}, 400, "model"),
    ("chat: an embedding model", "/v1/chat/completions", {"model": EMBED, "messages": [
        {"role": "user", "content": "a"}]}, 400, "model"),
    ("completions: a cross-encoder", "/v1/completions", {"model": RERANK, "prompt": "a"}, 400, "model"),
    ("generate: an embedding model", "/generate", {"model": EMBED, "prompt": "a"}, 400, "model"),
    ("embeddings: a cross-encoder", "/v1/embeddings", {"model": RERANK, "input": "a"}, 400, "model"),
    ("score: an embedding model", "/score", {"model": EMBED, "queries": "a", "documents": ["b"]}, 400, "model"),
    ("rerank: a chat model", "/rerank", {"model": CHAT, "query": "a", "documents": ["b"]}, 400, "model"),
    ("classify: an embedding model", "/classify", {"model": EMBED, "input": "a"}, 400, "model"),
    ("embeddings: an unknown model", "/v1/embeddings", {"model": "nope", "input": "a"}, 404, "model"),
    ("embeddings: no input", "/v1/embeddings", {"model": EMBED}, 400, "input"),
    ("embeddings: input a number", "/v1/embeddings", {"model": EMBED, "input": 5}, 400, "input"),
    ("embeddings: input empty", "/v1/embeddings", {"model": EMBED, "input": []}, 400, "input"),
    ("embeddings: an empty text", "/v1/embeddings", {"model": EMBED, "input": [""]}, 400, "input"),
    ("embeddings: ids mixed with lists", "/v1/embeddings", {"model": EMBED, "input": [1, [2]]}, 400, "input"),
    ("embeddings: texts mixed with ids", "/v1/embeddings", {"model": EMBED, "input": ["a", 2]}, 400, "input"),
    ("embeddings: a negative id", "/v1/embeddings", {"model": EMBED, "input": [[-1]]}, 400, "input[0][0]"),
    ("embeddings: an id past the vocabulary", "/v1/embeddings", {"model": EMBED, "input": [99_999]}, 400, "input"),
    ("embeddings: 9 inputs", "/v1/embeddings", {"model": EMBED, "input": ["a"] * 9}, 400, "input"),
    ("embeddings: 210 tokens in all", "/v1/embeddings", {"model": EMBED, "input": TOO_MANY_TOKENS}, 400, "input"),
    ("embeddings: an input past the context", "/v1/embeddings", {"model": EMBED, "input": [5] * 8193}, 400,
     "input"),
    ("embeddings: encoding_format bytes", "/v1/embeddings", {"model": EMBED, "input": "a", "encoding_format": "bytes"},
     400, "encoding_format"),
    ("embeddings: dimensions 0", "/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": 0}, 400, "dimensions"),
    ("embeddings: dimensions not listed", "/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": 5}, 400,
     "dimensions"),
    ("embeddings: dimensions past the size", "/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": 16}, 400,
     "dimensions"),
    ("embeddings: truncate_prompt_tokens -2", "/v1/embeddings", {"model": EMBED, "input": "a",
                                                                 "truncate_prompt_tokens": -2}, 400,
     "truncate_prompt_tokens"),
    ("embeddings: truncate_prompt_tokens past the context", "/v1/embeddings", {
        "model": EMBED, "input": "a", "truncate_prompt_tokens": 9000}, 400, "truncate_prompt_tokens"),
    ("embeddings: truncation_side middle", "/v1/embeddings", {"model": EMBED, "input": "a",
                                                              "truncation_side": "middle"}, 400, "truncation_side"),
    ("embeddings: chat messages", "/v1/embeddings", {"model": EMBED, "messages": [{"role": "user", "content": "a"}],
                                                      "input": "a"}, 400, "messages"),
    ("embeddings: padding", "/v1/embeddings", {"model": EMBED, "input": "a", "padding": "max_length"}, 400, "padding"),
    ("embeddings: embed_dtype", "/v1/embeddings", {"model": EMBED, "input": "a", "embed_dtype": "float16"}, 400,
     "embed_dtype"),
    ("pooling: task token_embed", "/pooling", {"model": EMBED, "input": "a", "task": "token_embed"}, 400, "task"),
    ("pooling: dimensions with classify", "/pooling", {"model": RERANK, "input": "a", "task": "classify",
                                                       "dimensions": 4}, 400, "dimensions"),
    ("classify: 9 inputs", "/classify", {"model": RERANK, "input": ["a"] * 9}, 400, "input"),
    ("score: no second side", "/score", {"model": RERANK, "queries": "a"}, 400, "documents"),
    ("score: sides of 2 and 3", "/score", {"model": RERANK, "queries": ["a", "b"], "documents": ["c"] * 3}, 400,
     "documents"),
    ("score: an empty side", "/score", {"model": RERANK, "queries": "a", "documents": []}, 400, "documents"),
    ("score: 9 pairs", "/score", {"model": RERANK, "queries": "a", "documents": ["b"] * 9}, 400, "documents"),
    ("score: max_tokens_per_doc -1", "/score", {"model": RERANK, "queries": "a", "documents": ["b"],
                                                "max_tokens_per_doc": -1}, 400, "max_tokens_per_doc"),
    ("rerank: no query", "/rerank", {"model": RERANK, "documents": ["b"]}, 400, "query"),
    ("rerank: a document that is a number", "/rerank", {"model": RERANK, "query": "a", "documents": [5]}, 400,
     "documents[0]"),
    ("rerank: top_n -1", "/v1/rerank", {"model": RERANK, "query": "a", "documents": ["b"], "top_n": -1}, 400, "top_n"),
    ("rerank: 200 tokens in one pair", "/rerank", {"model": RERANK, "query": "a " * 150, "documents": ["b " * 60]},
     400, "documents"),
]


def test_hostile_pooling_requests_are_4xx_naming_the_field_while_a_stream_runs_beside(pools):
    beside: dict = {}
    started = threading.Event()
    streamer = threading.Thread(target=stream_beside, args=(pools.http, 300, beside, started))
    streamer.start()
    assert started.wait(30), "the normal stream never started"
    sent = {engine.model: len(engine.added) for engine in pools.engines}
    wrong = {}
    with pools.client() as client, ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda row: (row, client.post(row[1], json=row[2])), HOSTILE)
        for (name, _, _, status, field), answer in answers:
            error = answer.json().get("error", {})
            if answer.status_code != status or error.get("param") != field:
                wrong[name] = (answer.status_code, answer.text[:300])
    assert {engine.model: len(engine.added) for engine in pools.engines} == sent, "a hostile request reached an engine"
    streamer.join(120)
    assert wrong == {}
    assert beside["status"] == 200 and beside["events"][-1] == "[DONE]"


def metric(frontend, name: str, **labels) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in frontend.http.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            found = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if found == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_pooling_requests_and_their_tokens_count_on_their_models_series(pools):
    before = (metric(pools, "llm_prompt_tokens_total", model=EMBED),
              metric(pools, "llm_requests_finished_total", model=EMBED, finish_reason="stop"))
    pools.post("/v1/embeddings", {"model": EMBED, "input": [[1, 2, 3], [4, 5]]})
    after = (metric(pools, "llm_prompt_tokens_total", model=EMBED),
             metric(pools, "llm_requests_finished_total", model=EMBED, finish_reason="stop"))
    assert (after[0] - before[0], after[1] - before[1]) == (5, 2)


def test_coheres_clients_rerank(pools):
    import cohere

    scores = [item["score"] for item in pools.post("/score", {"model": RERANK, "queries": "q", "documents": [
        "a", "b", "c"]}).json()["data"]]
    order = sorted(range(3), key=lambda index: -scores[index])[:2]
    v2 = cohere.ClientV2(api_key="unused", base_url=pools.url, httpx_client=pools.client())
    answer = v2.rerank(model=RERANK, query="q", documents=["a", "b", "c"], top_n=2)
    assert [result.index for result in answer.results] == order
    assert [result.relevance_score for result in answer.results] == pytest.approx([scores[i] for i in order])
    v1 = cohere.Client(api_key="unused", base_url=pools.url, httpx_client=pools.client())
    answer = v1.rerank(model=RERANK, query="q", documents=["a", "b", "c"], top_n=2, return_documents=True)
    assert [(result.index, result.document.text) for result in answer.results] == [(i, "abc"[i]) for i in order]
