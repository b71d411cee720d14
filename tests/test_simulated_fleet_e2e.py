"""A fleet of 8 simulated engines and 2 frontends, started by `python -m common.service` as `make serve`
starts it with `engine_backend: simulated`, all through nginx: /generate, chat streamed with the openai
package, /health, /metrics with every engine's figures and its prefix cache, exact prefix placement
from the simulated engines' KV-cache events, the operator emptying prefix caches (every router following),
a refusal in the protocol's shape, engines that share a GPU taking turns at it, and one engine killed (only its requests fail; supervisord restarts it)
and one drained with SIGTERM. No vLLM is started."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from openai import OpenAI

from common.config import ROOT
from tests.conftest import Deployment, health, wait_for, wait_until_whole
from tests.test_faults_e2e import Stream
from tests.test_fleet_e2e import ADMIN, ADMIN_KEY, PIN, cached_tokens, listing, moved, per_engine, reported, routed

ENGINES = 8
PROFILE = ROOT / "tests/fixtures/step-time-profile-fixture.json"
GPUS = "0,0,1,1,2,2,3,3"  # two engines a GPU: they take turns at it


@pytest.fixture(scope="module")
def fleet(model_dir):
    deployment = Deployment("simulated", server={"admin_api_key": ADMIN_KEY},
                            engine_args={"data_parallel_size": ENGINES})
    inference = yaml.safe_load((deployment.dir / "inference.yml").read_text())
    inference.update(engine_backend="simulated", simulator={"profile": str(PROFILE), "seed": 7},
                     cuda_visible_devices=GPUS)
    (deployment.dir / "inference.yml").write_text(yaml.safe_dump(inference))
    deployment.start("-m", "common.service", log="service")
    try:
        wait_for(lambda: listing(deployment.url, [True] * ENGINES), 300, 1, "every simulated engine up")
        wait_until_whole(deployment)
        yield deployment
    finally:
        deployment.close()


def generate(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + "/generate", json=body, headers={"accept": "application/json", **(headers or {})},
                      timeout=120)


def test_health_and_metrics_list_every_simulated_engine(fleet):
    engines = health(fleet.url).json()["engines"]
    assert [(engine["rank"], engine["up"]) for engine in engines] == [(rank, True) for rank in range(ENGINES)]
    assert len({engine["engine_id"] for engine in engines}) == ENGINES
    assert per_engine(fleet.url, "llm_engine_up", "engine") == {(str(rank),): 1 for rank in range(ENGINES)}
    assert len(per_engine(fleet.url, "llm_engine_kv_cache_usage_ratio", "engine")) == ENGINES
    assert per_engine(fleet.url, "llm_engine_preemptions_total", "engine") == {(str(rank),): 0 for rank in range(ENGINES)}
    # engines on one GPU share its turns through one lock file each
    assert sorted(path.name for path in (fleet.dir / "run").glob("simulated-gpu-*.lock")) == \
        [f"simulated-gpu-{gpu}.lock" for gpu in range(4)]


def test_generate_gives_tokens_of_the_served_vocabulary_and_a_seed_repeats_them(fleet, tokenizer):
    body = {"prompt": "The capital of France is", "max_tokens": 12, "ignore_eos": True, "seed": 11}
    answers = [generate(fleet.url, body, headers={PIN: str(rank)}) for rank in (1, 6)]
    first, second = (answer.json() for answer in answers)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert first["finish_reason"] == "length" and len(first["token_ids"]) == 12
    assert first["usage"]["prompt_tokens"] == len(tokenizer.encode(body["prompt"]))
    assert first["token_ids"] == second["token_ids"]  # one seed, two engines: the same tokens
    assert first["text"] == tokenizer.decode(first["token_ids"])
    plain = httpx.post(fleet.url + "/generate", json={"prompt": "hi", "max_tokens": 5}, timeout=120)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/plain")


def test_chat_streams_with_the_openai_client(fleet):
    client = OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0, timeout=120)
    body = dict(model="tiny-llama", messages=[{"role": "user", "content": "Say something."}], max_tokens=20,
                seed=5, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant" and len(deltas) > 2
    assert "".join(delta.content or "" for delta in deltas) == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20


def test_a_prompt_of_token_ids_is_echoed_as_its_text_and_only_when_asked(fleet, tokenizer):
    client = OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0, timeout=120)
    ids = tokenizer.encode("The capital of France is")
    body = dict(model="tiny-llama", prompt=ids, max_tokens=6, seed=3, extra_body={"ignore_eos": True})
    plain, echoed = client.completions.create(**body), client.completions.create(**body, echo=True)
    assert echoed.choices[0].text == tokenizer.decode(ids, skip_special_tokens=False) + plain.choices[0].text
    assert plain.usage.prompt_tokens == echoed.usage.prompt_tokens == len(ids)


def test_what_the_simulation_does_not_model_is_refused_in_the_protocols_shape(fleet):
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "response_format": {"type": "json_object"}}
    answer = httpx.post(fleet.url + "/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 400
    assert "does not model structured outputs" in answer.json()["error"]["message"]
    assert generate(fleet.url, {"prompt": "still serving", "max_tokens": 3}).status_code == 200


def test_a_shared_prefix_stays_on_one_engine_whose_prefix_cache_serves_it(fleet, tokenizer):
    document = " ".join(f"line {i} of a document the simulated engines cache." for i in range(60))
    shared_blocks = len(tokenizer.encode(document)) // 16 - 1  # the last may hold the question's first token
    pinned = generate(fleet.url, {"prompt": f"{document}\nSummary?", "max_tokens": 4}, headers={PIN: "4"})
    assert pinned.status_code == 200
    # The engine's KV-cache events reach every frontend, which then places the prefix on it.
    wait_for(lambda: per_engine(fleet.url, "llm_engine_reported_cache_blocks", "engine").get(("4",), 0) > 0, 10,
             what="engine 4 to report the blocks it cached")
    before = routed(fleet.url)
    hits_before = per_engine(fleet.url, "llm_engine_prefix_cache_hits_total", "engine").get(("4",), 0)
    for question in range(6):  # nginx alternates the frontends: each routes some of them
        assert generate(fleet.url, {"prompt": f"{document}\nQuestion {question}?", "max_tokens": 4}).status_code \
            == 200
    assert moved(before, routed(fleet.url)) == {("4", "prefix"): 6}
    wait_for(lambda: per_engine(fleet.url, "llm_engine_prefix_cache_hits_total", "engine")[("4",)]
             >= hits_before + 6 * 16 * shared_blocks, 5, what="engine 4's prefix-cache hits to grow by the shared blocks")


def test_an_operator_empties_prefix_caches_and_every_router_forgets_them(fleet):
    prompt = " ".join(f"paragraph {i} of a text the operator will flush." for i in range(40)) + "\nWell?"
    assert cached_tokens(fleet.url, prompt, 2) == 0
    assert cached_tokens(fleet.url, prompt, 2) > 0  # cached there now
    wait_for(lambda: all(reported(fleet, 2)), 10, what="both frontends to hear of engine 2's blocks")
    reset = httpx.post(fleet.url + "/admin/engines/2/reset_prefix_cache", headers=ADMIN, timeout=60)
    assert reset.status_code == 200 and reset.json() == {"model": "tiny-llama", "emptied": [2]}
    wait_for(lambda: reported(fleet, 2) == [0, 0], 10, what="both frontends to hear engine 2 emptied its cache")
    assert cached_tokens(fleet.url, prompt, 2) == 0
    # An engine whose requests hold blocks refuses, and says so; the other engines' caches are emptied.
    stream = Stream(fleet.url, {"prompt": "busy", "max_tokens": 600, "ignore_eos": True}, headers={PIN: "6"})
    stream.start()
    wait_for(stream.started, 60, what="the stream to start")
    everywhere = httpx.post(fleet.url + "/admin/engines/reset_prefix_cache", headers=ADMIN, timeout=60)
    error = everywhere.json()["error"]
    assert everywhere.status_code == 409 and error["param"] == "rank" and "engine 6:" in error["message"]
    assert "1 running here" in error["message"] and "emptied: engines [0, 1, 2, 3, 4, 5, 7]" in error["message"]
    assert cached_tokens(fleet.url, prompt, 2) == 0
    stream.join(120)
    assert stream.status == 200 and '"error"' not in "".join(stream.chunks)
    unknown = httpx.post(fleet.url + f"/admin/engines/{ENGINES}/reset_prefix_cache", headers=ADMIN, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "rank"
    assert httpx.post(fleet.url + "/admin/engines/2/reset_prefix_cache", timeout=60).status_code == 401


def test_a_killed_engine_fails_only_its_requests_and_is_restarted(fleet):
    long = {"prompt": "a long answer", "max_tokens": 3000, "ignore_eos": True}
    doomed = [Stream(fleet.url, long, headers={PIN: "3"}) for _ in range(2)]
    survivors = [Stream(fleet.url, {**long, "max_tokens": 600}, headers={PIN: "0"}) for _ in range(2)]
    for stream in doomed + survivors:
        stream.start()
    wait_for(lambda: all(stream.started() for stream in doomed + survivors), 60, what="the streams to start")
    old_id = health(fleet.url).json()["engines"][3]["engine_id"]
    os.kill(fleet.pid("engine-3"), signal.SIGKILL)
    killed_at = time.monotonic()
    for stream in doomed:
        stream.join(15)
        assert stream.ended_at - killed_at < 3.5
        assert '"error"' in stream.chunks[-1]
    assert generate(fleet.url, {"prompt": "meanwhile", "max_tokens": 4}).status_code == 200
    for stream in survivors:
        stream.join(120)
        assert stream.status == 200 and stream.error is None
        assert '"error"' not in "".join(stream.chunks)
    restarted = wait_for(lambda: (engine := health(fleet.url).json()["engines"][3])["up"] and engine, 120, 1,
                         "engine 3 to come back")
    assert restarted["engine_id"] != old_id
    assert generate(fleet.url, {"prompt": "back again", "max_tokens": 4}, headers={PIN: "3"}).status_code == 200


def test_sigterm_drains_one_engine_which_ends_its_requests_and_comes_back(fleet):
    stream = Stream(fleet.url, {"prompt": "drained", "max_tokens": 3000, "ignore_eos": True}, headers={PIN: "5"})
    stream.start()
    wait_for(stream.started, 60, what="the stream to start")
    old_id = health(fleet.url).json()["engines"][5]["engine_id"]
    os.kill(fleet.pid("engine-5"), signal.SIGTERM)
    stream.join(15)
    assert stream.ended_at is not None and '"error"' in stream.chunks[-1]
    restarted = wait_for(lambda: (engine := health(fleet.url).json()["engines"][5])["up"]
                         and engine["engine_id"] != old_id and engine, 120, 1, "engine 5 to come back")
    assert restarted["engine_id"] != old_id
    assert generate(fleet.url, {"prompt": "after the drain", "max_tokens": 4}, headers={PIN: "5"}).status_code == 200


def test_a_simulated_engine_worker_never_imports_vllm_or_torch(tmp_path):
    inference = tmp_path / "inference.yml"
    inference.write_text(f"engine_backend: simulated\nsimulator: {{profile: {PROFILE}}}\n")
    script = """
import sys
from common.config import load_inference, load_server
from engine_worker.__main__ import model_path, start_simulated
from engine_worker.io_threads import OutputPublisher
from engine_worker.load import LoadTracker
inference = load_inference()
engine, adapters, prepare = start_simulated(model_path(load_server(), inference), inference, 0, LoadTracker(False), True, None)
print(sorted({name.split('.')[0] for name in sys.modules} & {'vllm', 'torch', 'transformers'}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"INFERENCE_CONFIG": str(inference), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
