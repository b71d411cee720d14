"""A real PUB/SUB gap: with high-water marks of one message, a frontend that stops reading (SIGSTOP)
makes the engine's PUB drop its outputs. When it reads again, the numbering shows the gap: every
in-flight request fails at once, none hangs, and the frontend re-handshakes by itself."""
import os
import signal
import time

import pytest

from tests.conftest import Deployment, engine_idle, is_healthy, wait_for
from tests.test_faults_e2e import Stream, short_request


@pytest.fixture(scope="module")
def tiny_hwm(model_dir):
    # A long heartbeat timeout, so only the numbering can notice what the pause did.
    deployment = Deployment("gap", frontends=1, server={"engine": {
        "send_hwm": 1, "receive_hwm": 1, "heartbeat_timeout_s": 120}})
    try:
        deployment.start("-m", "engine_worker", log="engine")
        deployment.frontend = deployment.start("-m", "frontend", "--index", "0", log="frontend")
        wait_for(lambda: is_healthy(deployment.frontend_url(0)), 180, 0.5, "the frontend to turn healthy")
        yield deployment
    finally:
        deployment.close()


def test_gap_fails_in_flight_requests_at_once_and_the_frontend_recovers(tiny_hwm):
    url = tiny_hwm.frontend_url(0)
    streams = [Stream(url, {"prompt": f"gap {i}", "max_tokens": 3000, "ignore_eos": True}) for i in range(48)]
    for stream in streams:
        stream.start()
    wait_for(lambda: all(s.started() for s in streams), 60, what="every stream to start")
    os.kill(tiny_hwm.frontend.pid, signal.SIGSTOP)
    time.sleep(12)  # the engine goes on stepping; its outputs overflow the socket buffers and drop
    os.kill(tiny_hwm.frontend.pid, signal.SIGCONT)
    resumed = time.monotonic()
    for stream in streams:
        stream.join(15)
    assert all(stream.ended_at is not None for stream in streams), "a request hangs"
    assert all(stream.ended_at - resumed < 10 for stream in streams)
    # With room for one message, outputs drop even before the pause: a stream may already have
    # failed on an earlier gap, or been refused with 503 while its frontend re-handshook. Either
    # way each of these 3000-token requests ended early with an error, and gaps were the cause.
    errors = [stream.chunks[-1] for stream in streams]
    assert all('"error"' in error for error in errors)
    assert all(stream.status in (200, 503) for stream in streams)
    assert any("outputs lost" in error for error in errors)
    wait_for(lambda: is_healthy(url), 30, what="the frontend to re-handshake")
    wait_for(lambda: engine_idle(url), 30, what="the engine to drop the failed requests")
    # It serves again. A high-water mark of one still drops a message now and then (a heartbeat and
    # an output sent together), so a request may meet a gap of its own: a 503 to retry, never a hang.
    answers = []
    wait_for(lambda: answers.append(short_request(url)) or answers[-1].status_code == 200, 60, 0.5,
             "a request after the recovery to succeed")
    assert all(answer.status_code == 503 and answer.headers["retry-after"] for answer in answers[:-1])
