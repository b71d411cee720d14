"""Two engine workers (data_parallel_size 2 on the CPU) and two frontends behind nginx, as `make serve`
runs them: requests spread over the engines, a shared prefix stays on one, the pin header, an operator
emptying vLLM's prefix cache, and one engine killed under load while the other serves on."""
import asyncio
import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Deployment, health, wait_for, wait_until_whole
from tests.test_faults_e2e import Stream

PIN = "X-data-parallel-rank"
ADMIN_KEY = "fleet-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def fleet(model_dir):
    # A small KV cache each; the heartbeat timeout is the default (a killed engine is noticed in 2.5 s).
    deployment = Deployment("fleet", server={"admin_api_key": ADMIN_KEY},
                            engine_args={"data_parallel_size": 2, "max_num_seqs": 32})
    deployment.start("-m", "common.service", log="service")
    try:
        # Two vLLM engines share the CPU while they start: longer than one engine takes.
        wait_for(lambda: listing(deployment.url, [True, True]), 900, 1, "both engines up")
        wait_until_whole(deployment)
        yield deployment
    finally:
        deployment.close()


def per_engine(url: str, name: str, *labels: str) -> dict:
    """One series of /metrics by its labels (the engine's rank first)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def routed(url: str) -> dict[tuple[str, str], float]:
    """llm_engine_routed_requests_total by (engine, reason), added up over every frontend."""
    return per_engine(url, "llm_engine_routed_requests_total", "engine", "reason")


def moved(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def generate(url: str, prompt: str, max_tokens: int = 8, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + "/generate", json={"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True},
                      headers={"accept": "application/json", **(headers or {})}, timeout=120)


def listing(url: str, up: list[bool]) -> httpx.Response | None:
    """The /health answer when its `engines` are up as given."""
    answer = health(url)
    if answer is None or "json" not in answer.headers.get("content-type", ""):
        return None  # nobody listening yet, or nginx's own error page
    return answer if [engine["up"] for engine in answer.json()["engines"]] == up else None


def test_health_lists_both_engines(fleet):
    answer = health(fleet.url)
    assert answer.status_code == 200
    engines = answer.json()["engines"]
    assert [(engine["rank"], engine["up"]) for engine in engines] == [(0, True), (1, True)]
    assert engines[0]["engine_id"] != engines[1]["engine_id"]
    assert per_engine(fleet.url, "llm_engine_up", "engine") == {("0",): 1, ("1",): 1}
    assert set(per_engine(fleet.url, "llm_engine_kv_cache_usage_ratio", "engine")) == {("0",), ("1",)}


def test_concurrent_requests_spread_over_both_engines(fleet):
    before = routed(fleet.url)

    async def run():
        async with httpx.AsyncClient(base_url=fleet.url, timeout=300) as client:
            bodies = [{"prompt": f"request {i}", "max_tokens": 8, "ignore_eos": True} for i in range(64)]
            return await asyncio.gather(*(client.post("/generate", json=body) for body in bodies))

    answers = asyncio.run(run())
    assert [answer.status_code for answer in answers] == [200] * 64
    by_engine = {}
    for (engine, _), count in moved(before, routed(fleet.url)).items():
        by_engine[engine] = by_engine.get(engine, 0) + count
    assert sum(by_engine.values()) == 64
    assert by_engine.get("0", 0) >= 8 and by_engine.get("1", 0) >= 8, by_engine
    # Each engine's load reports acknowledged every frontend's sends, and give vLLM's free KV blocks.
    for i in range(2):
        wait_for(lambda: all(engine["unacknowledged"] == 0 and engine["free_kv_blocks"] > 0
                             for engine in health(fleet.frontend_url(i)).json()["engines"]),
                 10, 0.2, f"frontend {i}'s load view to settle")


def wait_until_idle(url: str) -> None:
    """Until the heartbeats every frontend holds show no engine running or queueing anything: the router
    rightly sends a prompt away from its prefix's engine while that one has a queue the other lacks."""
    quiet = []

    def idle() -> bool:
        figures = [*per_engine(url, "llm_engine_running_requests", "engine").values(),
                   *per_engine(url, "llm_engine_waiting_requests", "engine").values()]
        quiet.append(len(figures) == 4 and not any(figures))
        return len(quiet) >= 4 and all(quiet[-4:])  # nginx alternates: both frontends, twice each

    wait_for(idle, 30, 0.3, "both engines idle in every frontend's view")


def test_requests_sharing_a_long_prefix_land_on_one_engine(fleet):
    document = " ".join(f"line {i} of the shared document." for i in range(60))
    wait_until_idle(fleet.url)  # the test before leaves queues that heartbeats report for a moment
    before = routed(fleet.url)
    hits_before = per_engine(fleet.url, "llm_engine_prefix_cache_hits_total", "engine")
    for question in range(8):  # nginx alternates the frontends: each routes some of them
        assert generate(fleet.url, f"{document}\nQuestion {question}?").status_code == 200
    change = moved(before, routed(fleet.url))
    assert len(change) == 1, change
    ((engine, reason), count), = change.items()
    assert reason == "prefix" and count == 8
    # ... and that engine's prefix cache served the shared part (heartbeats bring its count).
    wait_for(lambda: per_engine(fleet.url, "llm_engine_prefix_cache_hits_total", "engine")[(engine,)]
             > hits_before.get((engine,), 0), 5, what="the engine's prefix-cache hits to grow")


def test_every_frontend_follows_a_prefix_to_the_engine_that_reports_holding_it(fleet):
    """Exact placement: a prefix left on each engine by a pinned request (which teaches no frontend's
    own memory anything) is then routed there by both frontends, from the engines' reports of what
    their prefix caches hold."""
    wait_until_idle(fleet.url)
    for rank in ("0", "1"):
        document = " ".join(f"part {rank}, line {i} of a document kept on one engine." for i in range(60))
        assert generate(fleet.url, f"{document}\nSummary?", headers={PIN: rank}).status_code == 200
        before = routed(fleet.url)
        for question in range(4):  # nginx alternates the frontends: each routes two
            assert generate(fleet.url, f"{document}\nQuestion {question}?").status_code == 200
        assert moved(before, routed(fleet.url)) == {(rank, "prefix"): 4}
    reported = per_engine(fleet.url, "llm_engine_reported_cache_blocks", "engine")
    assert set(reported) == {("0",), ("1",)} and min(reported.values()) > 0, reported


def cached_tokens(url: str, prompt: str, rank: int) -> int:
    """The prompt tokens engine `rank` found in its prefix cache for one completion of `prompt`."""
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 2}
    answer = httpx.post(url + "/v1/completions", json=body, headers={PIN: str(rank)}, timeout=120)
    assert answer.status_code == 200
    return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def reported(deployment: Deployment, rank: int) -> list[float]:
    """The prefix blocks each of the two frontends' routers holds engine `rank` to have."""
    return [per_engine(deployment.frontend_url(index), "llm_engine_reported_cache_blocks", "engine")
            .get((str(rank),), 0) for index in range(2)]


def test_an_operator_empties_vllms_prefix_cache_and_every_frontend_forgets_it(fleet):
    """vLLM's reset_prefix_cache behind the admin route; vLLM sends its AllBlocksCleared only with its next
    step, so the engine worker tells the frontends itself."""
    wait_until_idle(fleet.url)
    prompt = " ".join(f"line {i} of a page the operator will flush." for i in range(40)) + "\nWell?"
    assert cached_tokens(fleet.url, prompt, 0) == 0
    assert cached_tokens(fleet.url, prompt, 0) > 0
    wait_for(lambda: all(reported(fleet, 0)), 10, what="both frontends to hear of engine 0's blocks")
    reset = httpx.post(fleet.url + "/admin/engines/0/reset_prefix_cache", headers=ADMIN, timeout=60)
    assert reset.status_code == 200 and reset.json() == {"model": "tiny-llama", "emptied": [0]}
    wait_for(lambda: reported(fleet, 0) == [0, 0], 10, what="both frontends to hear engine 0 emptied its cache")
    assert cached_tokens(fleet.url, prompt, 0) == 0


def test_the_pin_header_is_honoured_and_an_unknown_rank_is_refused(fleet):
    before = routed(fleet.url)
    for _ in range(3):
        assert generate(fleet.url, "pinned", headers={PIN: "1"}).status_code == 200
    assert moved(before, routed(fleet.url)) == {("1", "pinned"): 3}
    for bad in ("2", "-1", "one"):
        answer = generate(fleet.url, "pinned", headers={PIN: bad})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == PIN


def test_a_killed_engine_fails_only_its_requests_and_rejoins(fleet):
    long = {"prompt": "a long answer", "max_tokens": 3000, "ignore_eos": True}
    doomed = [Stream(fleet.url, long, headers={PIN: "1"}) for _ in range(2)]
    survivors = [Stream(fleet.url, {**long, "max_tokens": 150}, headers={PIN: "0"}) for _ in range(2)]
    for stream in doomed + survivors:
        stream.start()
    wait_for(lambda: all(stream.started() for stream in doomed), 60, what="the doomed streams to start")
    os.kill(fleet.pid("engine-1"), signal.SIGKILL)
    killed_at = time.monotonic()
    for stream in doomed:
        stream.join(15)
        assert stream.ended_at - killed_at < 3
        assert '"error"' in stream.chunks[-1]
    # While engine 1 is down: /health stays 200 and lists it down; new requests all go to engine 0.
    for i in range(2):
        answer = wait_for(lambda: listing(fleet.frontend_url(i), [True, False]), 5, what=f"frontend {i} to see it")
        assert answer.status_code == 200
    answers = [generate(fleet.url, f"meanwhile {i}") for i in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6
    pinned = generate(fleet.url, "pinned to the dead", headers={PIN: "1"})
    assert pinned.status_code == 503 and pinned.headers["retry-after"]
    for stream in survivors:
        stream.join(120)
        assert stream.status == 200 and stream.error is None
        assert '"error"' not in "".join(stream.chunks)
    # supervisord restarts it; it serves again.
    wait_for(lambda: health(fleet.url).json()["engines"][1]["up"], 300, 1, "engine 1 to come back")
    assert generate(fleet.url, "back again", headers={PIN: "1"}).status_code == 200
