"""reuse_port: true, for hosts without nginx: every frontend binds the public port itself with
SO_REUSEPORT, the kernel spreads connections among them, and supervisord starts no nginx. A frontend
setting: its frontends run on the session's engine."""
import http.client
import time

import httpx
import pytest

from tests.conftest import frontends_on, health, wait_for


def frontends_answering(url: str, asks: int = 40) -> set[str]:
    """Which frontends answer /health with 200, asking on a new connection each time."""
    seen = set()
    for _ in range(asks):
        answer = health(url)
        if answer is not None and answer.status_code == 200:
            seen.add(answer.json()["frontend"])
    return seen


@pytest.fixture(scope="module")
def shared_port(service):
    with frontends_on(service, "reuse", frontends=2, wait=False, reuse_port=True) as deployment:
        wait_for(lambda: len(frontends_answering(deployment.url)) == 2, 300, 1, "both frontends on the one port")
        yield deployment


def test_both_frontends_serve_the_one_port_without_nginx(shared_port):
    status = shared_port.supervisorctl("status")
    assert "nginx" in status and "RUNNING" not in status.split("nginx", 1)[1].splitlines()[0]
    answers = [httpx.post(shared_port.url + "/generate", json={"prompt": "shared", "max_tokens": 4, "ignore_eos": True},
                          headers={"accept": "application/json"}, timeout=60) for _ in range(10)]
    assert [answer.status_code for answer in answers] == [200] * 10
    assert all(answer.json()["usage"]["completion_tokens"] == 4 for answer in answers)


def test_with_no_nginx_in_front_a_frontend_bounds_the_request_head(shared_port):
    """A 1 MB header reaches a frontend directly here: it answers 431, not after buffering it whole."""
    answer = httpx.post(shared_port.url + "/generate", json={"prompt": "hi", "max_tokens": 2},
                        headers={"x-big": "a" * 1_000_000}, timeout=60)
    assert answer.status_code == 431
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(shared_port.url + "/generate", json={"prompt": "hi", "max_tokens": 2},
                      headers={"accept": "application/json"}, timeout=60).status_code == 200


def test_an_idle_keep_alive_connection_outlives_a_client_pools_expiry(shared_port):
    """httpx (so the openai and anthropic SDKs) reuses a connection idle up to 5 s: a frontend that closed
    it at 5 s itself could close it under a request the client had just sent there."""
    host, port = shared_port.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = '{"prompt": "kept", "max_tokens": 2}'
    headers = {"content-type": "application/json", "accept": "application/json"}
    try:
        for pause in (0, 7):
            time.sleep(pause)
            connection.request("POST", "/generate", body=body, headers=headers)
            answer = connection.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
    finally:
        connection.close()
