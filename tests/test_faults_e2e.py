"""Faults through nginx and supervisord on the real engine: nothing hangs, nothing is lost, the
service recovers without restarting what did not fail, and the metrics keep what was counted. Every
test here that kills or stops something does it to this module's one victim deployment; the last one
stops it for good, as `make stop` does from another shell."""
import asyncio
import os
import re
import signal
import threading
import time

import httpx
import msgspec
import pytest

from common.config import ServerConfig
from common.messages import Goodbye, StepOutput
from common.service import control
from engine_worker.orphans import group_members, is_ours
from tests.conftest import alive_in, engine_idle, health, is_healthy, running_service, wait_for, wait_until_whole
from tests.test_engine_wire_e2e import WireClient
from tests.test_metrics_e2e import MODEL, scrape, scrape_vllm, series

LONG = {"prompt": "a long answer", "max_tokens": 6000, "ignore_eos": True}


@pytest.fixture(scope="module")
def faults(model_dir):
    server = {"max_in_flight": 6, "request_timeout_s": 20, "drain_timeout_s": 20}
    with running_service("faults", server=server) as deployment:
        yield deployment


def short_request(url: str) -> httpx.Response:
    return httpx.post(url + "/generate", json={"prompt": "after", "max_tokens": 8, "ignore_eos": True},
                      headers={"accept": "application/json"}, timeout=60)


class Stream(threading.Thread):
    """A streaming /generate client in the background that records what it got and when it ended."""

    def __init__(self, url: str, body: dict, headers: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.body, self.headers = url, body, headers
        self.chunks: list[str] = []
        self.status = None
        self.ended_at = None
        self.error = None

    def run(self):
        try:
            with httpx.stream("POST", self.url + "/generate?streaming=true", json=self.body, headers=self.headers,
                              timeout=120) as response:
                self.status = response.status_code
                for chunk in response.iter_text():
                    self.chunks.append(chunk)
        except httpx.HTTPError as error:
            self.error = error
        self.ended_at = time.monotonic()

    def started(self) -> bool:
        return len("".join(self.chunks)) > 0


def test_engine_killed_mid_stream_fails_requests_fast_and_recovers_without_frontend_restarts(faults):
    frontends_before = [faults.pid(f"frontend:frontend-{i}") for i in range(2)]
    engine = faults.pid("engine-0")
    streams = [Stream(faults.url, LONG) for _ in range(2)]
    for stream in streams:
        stream.start()
    wait_for(lambda: all(s.started() for s in streams), 60, what="both streams to start")
    vllm_running, vllm_generated = series("vllm:num_requests_running"), series("vllm:generation_tokens_total")
    wait_for(lambda: scrape_vllm(faults.url)[vllm_running] == 2, 15, what="vLLM to count both streams")
    vllm_before = scrape_vllm(faults.url)
    with httpx.Client(timeout=30) as client:
        results = {}

        def non_streaming():
            results["answer"] = client.post(faults.url + "/generate", json=LONG)
            results["at"] = time.monotonic()

        waiter = threading.Thread(target=non_streaming, daemon=True)
        waiter.start()
        time.sleep(0.5)
        os.kill(engine, signal.SIGKILL)
        killed_at = time.monotonic()
        for stream in streams:
            stream.join(10)
        waiter.join(10)
    for stream in streams:
        assert stream.ended_at is not None and stream.ended_at - killed_at < 3.5
        assert stream.status == 200
        assert '"error"' in stream.chunks[-1]
    assert results["answer"].status_code == 503
    assert results["at"] - killed_at < 3.5
    assert "engine" in results["answer"].json()["error"]["message"]
    assert health(faults.url).status_code == 503
    wait_until_whole(faults)
    assert short_request(faults.url).status_code == 200
    assert [faults.pid(f"frontend:frontend-{i}") for i in range(2)] == frontends_before
    # vLLM's child processes of the killed worker hold memory (a GPU, elsewhere): none is left.
    assert not [pid for pid in group_members(engine) if is_ours(pid)]
    # vLLM's gauges are written per process (the most recent value wins): the new engine's figures
    # replace the killed one's, while vLLM's counters keep what the killed engine counted.
    vllm_after = scrape_vllm(faults.url)
    assert vllm_after[vllm_running] == 0
    assert vllm_after[vllm_generated] >= vllm_before[vllm_generated] > 0


def test_frontend_killed_new_requests_go_to_the_other_and_it_comes_back(faults):
    victim = faults.pid("frontend:frontend-0")
    os.kill(victim, signal.SIGKILL)
    answers = [short_request(faults.url) for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    wait_for(lambda: faults.pid("frontend:frontend-0") not in (0, victim), 30, what="supervisord to restart it")
    wait_for(lambda: is_healthy(faults.frontend_url(0)), 60, what="the new frontend to be welcomed")


def test_a_killed_frontend_keeps_its_totals_and_drops_its_in_flight_requests(faults):
    survivor = faults.frontend_url(1)
    before = scrape(survivor)
    body = {"prompt": "in flight", "max_tokens": 4000, "ignore_eos": True}
    with httpx.stream("POST", faults.frontend_url(0) + "/generate?streaming=true", json=body, timeout=60) as response:
        chunks = response.iter_raw()  # kept: a dropped iterator closes the connection
        next(chunks)
        in_flight = series("llm_requests_in_flight", model=MODEL)
        wait_for(lambda: scrape(survivor)[in_flight] == 1, 10, what="one request in flight")
        faults.supervisorctl("signal", "KILL", "frontend:frontend-0")
        with pytest.raises(httpx.HTTPError):
            list(chunks)
    wait_for(lambda: is_healthy(faults.frontend_url(0)), 60, 0.5, "frontend 0 to come back")
    after = scrape(survivor)
    assert after[in_flight] == 0
    counters = [key for key in before if key[0].endswith("_total")]
    assert counters and all(after[key] >= before[key] for key in counters)


async def test_overload_is_503_with_retry_after_at_once(faults):
    # Two frontends with room for 6 each: 24 long requests at once overflow both (nginx tries the
    # other frontend on a 503, so a request is refused only when both are full).
    async def timed(client):
        started = time.monotonic()
        answer = await client.post("/generate", json={**LONG, "max_tokens": 300})
        return answer, time.monotonic() - started

    async with httpx.AsyncClient(base_url=faults.url, timeout=60) as client:
        results = await asyncio.gather(*(timed(client) for _ in range(24)))
    refused = [(answer, took) for answer, took in results if answer.status_code == 503]
    assert len(refused) >= 6
    assert all(answer.headers["retry-after"] == "1" for answer, _ in refused)
    assert all("limit" in answer.json()["error"]["message"] for answer, _ in refused)
    # admitted: served, or past this deployment's 20 s request timeout on a slow host (a 504)
    admitted = [(answer.status_code, took) for answer, took in results if answer.status_code != 503]
    assert len(admitted) >= 6 and {status for status, _ in admitted} <= {200, 504}
    # at once, not after waiting for room: before any admitted request has ended (a bound in seconds
    # would measure the host's load)
    assert max(took for _, took in refused) < min(took for _, took in admitted), \
        "a refusal must come at once, not after waiting"
    wait_for(lambda: engine_idle(faults.url), 20, what="the engine to be idle")


def test_request_over_the_timeout_is_504_and_aborted(faults):
    started = time.monotonic()
    answer = httpx.post(faults.url + "/generate", json=LONG, timeout=60)
    assert answer.status_code == 504
    assert "timeout" in answer.json()["error"]["message"]
    assert 19.5 < time.monotonic() - started < 26
    wait_for(lambda: engine_idle(faults.url), 10, what="the engine to drop the timed-out request")


def test_streamed_request_over_the_timeout_ends_with_an_error_chunk(faults):
    stream = Stream(faults.url, LONG)
    stream.run()
    assert stream.status == 200
    assert '"code":504' in stream.chunks[-1]


def test_frontend_sigterm_drains_running_streams_and_nginx_moves_on(faults):
    body = {"prompt": "drain", "max_tokens": 150, "ignore_eos": True}
    stream = Stream(faults.frontend_url(1), body)  # straight to frontend 1, the one we stop
    stream.start()
    wait_for(stream.started, 30, what="the stream to start")
    victim = faults.pid("frontend:frontend-1")
    os.kill(victim, signal.SIGTERM)
    time.sleep(0.3)
    during = [short_request(faults.url).status_code for _ in range(5)]
    stream.join(30)
    assert during == [200] * 5
    assert stream.error is None and stream.status == 200
    full = httpx.post(faults.url + "/generate", json={**body, "seed": 1}, headers={"accept": "application/json"},
                      timeout=60).json()
    assert full["usage"]["completion_tokens"] == 150  # the drained stream ran as long as a normal one
    assert '"error"' not in "".join(stream.chunks)
    wait_for(lambda: faults.pid("frontend:frontend-1") not in (0, victim), 40, what="supervisord to restart it")
    wait_for(lambda: is_healthy(faults.frontend_url(1)), 60, what="the new frontend to be welcomed")


def test_engine_sigterm_ends_requests_with_an_error_says_goodbye_and_comes_back(faults):
    """Seen by a client through nginx, and on the wire by a frontend's side of it (WireClient)."""
    frontends_before = [faults.pid(f"frontend:frontend-{i}") for i in range(2)]
    engine = faults.pid("engine-0")
    wire = WireClient(faults.server["run_dir"], "test-2~sigterm", broadcast=True)
    try:
        wire.handshake(timeout=60)
        wire.add("long", {"max_tokens": 8000, "ignore_eos": True})
        next(wire.deltas(timeout=60))
        stream = Stream(faults.url, LONG)
        stream.start()
        wait_for(stream.started, 30, what="the stream to start")
        os.kill(engine, signal.SIGTERM)
        stopped_at = time.monotonic()
        ended, goodbye = [], False
        # The Goodbye comes first, so frontends can move their streams to another engine; then the aborts.
        for message in wire.messages(timeout=30):
            if isinstance(message, StepOutput):
                ended += [d for d in message.deltas if d.finish_reason]
            goodbye = goodbye or isinstance(message, Goodbye)
            if goodbye and ended:
                break
        else:
            pytest.fail(f"Goodbye heard: {goodbye}; requests ended: {ended}")
    finally:
        wire.close()
    assert [(d.request_id, d.finish_reason) for d in ended] == [("long", "abort")]
    assert "shutting down" in ended[0].error
    stream.join(10)
    assert stream.ended_at - stopped_at < 3
    assert "shutting down" in stream.chunks[-1]
    wait_for(lambda: health(faults.url).status_code == 503, 5, what="/health to say the engine is down")
    supervisord = control(msgspec.convert(faults.server, ServerConfig))
    wait_for(lambda: supervisord.getProcessInfo("engine-0")["pid"] not in (0, engine), 60,
             what="supervisord to see the engine exit")
    assert supervisord.getProcessInfo("engine-0")["exitstatus"] == 0
    wait_until_whole(faults)
    assert short_request(faults.url).status_code == 200
    assert [faults.pid(f"frontend:frontend-{i}") for i in range(2)] == frontends_before


def test_stop_from_another_shell_ends_every_process(faults):
    service = faults.processes[0][0]
    wait_for(lambda: all_running(faults), 60, what="every program to be RUNNING")
    status = faults.service_command("status")
    pids = [int(pid) for pid in re.findall(r"pid (\d+),", status.stdout)]
    assert len(pids) == 4
    stop = faults.service_command("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert service.wait(timeout=60) == 0
    assert not any(alive(pid) for pid in pids), "a process outlived `stop`"
    assert not alive_in(faults)
    assert faults.service_command("status").returncode != 0


def all_running(deployment) -> bool:
    status = deployment.service_command("status")
    rows = dict(re.findall(r"^(\S+)\s+(\S+)", status.stdout, re.MULTILINE))
    return rows == {"engine-0": "RUNNING", "frontend:frontend-0": "RUNNING", "frontend:frontend-1": "RUNNING",
                    "nginx": "RUNNING"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
