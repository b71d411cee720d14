"""Stopping the service while streams run past drain_timeout_s: each client gets its protocol's
error event saying the server is shutting down, never a stream cut without one. The service stopped
is a frontend-only one (drain_timeout_s is the frontends' setting) on the session's engine."""
import json
import signal
import threading

import httpx
import msgspec

from tests.conftest import frontends_on, wait_for

# Far more than the tiny model writes in the drain time, so every stream is still running when it ends.
LONG = 6000
SHUTTING_DOWN = "the server is shutting down"


def stream_lines(url: str, path: str, body: dict, started: threading.Event, results: dict) -> None:
    text = ""
    try:
        with httpx.stream("POST", url + path, json=body, timeout=120) as response:
            for chunk in response.iter_text():
                started.set()
                text += chunk
        results[path] = (response.status_code, text.splitlines())
    except httpx.HTTPError as error:
        results[path] = ("cut", repr(error))


def test_streams_running_past_the_drain_timeout_end_with_a_shutting_down_error(service):
    streams = {
        "/v1/chat/completions": {"model": "tiny-llama", "messages": [{"role": "user", "content": "Tell me a story."}],
                                 "max_tokens": LONG, "ignore_eos": True, "stream": True},
        "/v1/completions": {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": LONG,
                            "ignore_eos": True, "stream": True},
        "/generate?streaming=true": {"prompt": "Once upon a time", "max_tokens": LONG, "ignore_eos": True},
    }
    with frontends_on(service, "drain-cut", drain_timeout_s=2) as deployment:
        process = deployment.processes[0][0]
        results: dict = {}
        starts = {path: threading.Event() for path in streams}
        threads = [threading.Thread(target=stream_lines, args=(deployment.url, path, body, starts[path], results))
                   for path, body in streams.items()]
        for thread in threads:
            thread.start()
        wait_for(lambda: all(event.is_set() for event in starts.values()), 120, what="every stream's first bytes")
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert process.wait(timeout=60) == 0

    for path in ("/v1/chat/completions", "/v1/completions"):
        status, lines = results[path]
        assert status == 200, lines
        events = [line.removeprefix("data: ") for line in lines if line]
        assert events[-1] == "[DONE]", events[-3:]
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and error["message"] == SHUTTING_DOWN, error
        assert 1 < len(events) - 2 < LONG, "the stream ran before the drain time ended it"
        assert all("error" not in json.loads(event) for event in events[:-2])

    status, lines = results["/generate?streaming=true"]
    assert status == 200, lines
    text, last = "\n".join(lines[:-1]), msgspec.json.decode(lines[-1])
    assert last == {"error": {"message": SHUTTING_DOWN, "type": "service_unavailable", "param": None, "code": 503}}
    assert text.strip(), "the text before the error"
