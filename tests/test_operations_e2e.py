"""The service as `make serve` runs it, operated: a quiet start, a second start that refuses,
status and stop from another shell, and a stop that lets running streams finish."""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from common.config import ROOT
from tests.conftest import Deployment, health, is_healthy, wait_for

STREAM_TOKENS = 48


@contextlib.contextmanager
def running_service(name: str, **deployment_args):
    """As conftest's, with more patience: a start on a 2-core machine shared with other engines
    has taken over 5 minutes."""
    deployment = Deployment(name, **deployment_args)
    deployment.start("-m", "common.service", log="service")
    try:
        wait_for(lambda: is_healthy(deployment.url), 900, 1, "the service to turn healthy")
        yield deployment
    finally:
        deployment.close()


def service_command(deployment, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.service", *args], cwd=ROOT, env=deployment.env,
                          capture_output=True, text=True, timeout=timeout)


def generate_requests_counted(url: str) -> float:
    metrics = httpx.get(url + "/metrics", timeout=10).text
    pattern = r'^llm_http_requests_total\{[^}]*route="/generate"[^}]*status="200"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_quiet_start_second_start_refused_status_and_stop(model_dir):
    with running_service("ops", server={"max_connections_per_client": 4}) as deployment:
        service = deployment.processes[0][0]
        log_file = deployment.dir / "service.log"
        wait_for(lambda: "serving on" in log_file.read_text(), 10, what="the service to say where it serves")
        log = log_file.read_text()
        assert "CRIT" not in log
        assert not re.search(r"\[(error|emerg|crit|alert)\]", log), "nginx complained at start"
        assert "Uvicorn running on" not in log, "a frontend's own address presented as the service's"
        assert len(re.findall(r"frontend \S+ ready on 127\.0\.0\.1:\d+", log)) == 2
        assert re.search(r"engine \w+ ready", log)
        assert f"serving on {deployment.url}" in log

        httpx.post(deployment.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        counted = generate_requests_counted(deployment.url)
        second = service_command(deployment, timeout=60)
        assert second.returncode != 0
        assert f"a service already runs in {deployment.server['run_dir']}" in second.stderr
        assert f"service pid {service.pid}" in second.stderr and "supervisord pid" in second.stderr
        assert "serving on" not in second.stdout
        httpx.post(deployment.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert generate_requests_counted(deployment.url) == counted + 1, "the first service stopped counting"

        assert_connections_limited(deployment.url, 4)

        status = service_command(deployment, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = dict(re.findall(r"^(\S+)\s+(\S+)", status.stdout, re.MULTILINE))
        assert rows == {"engine-0": "RUNNING", "frontend:frontend-0": "RUNNING",
                        "frontend:frontend-1": "RUNNING", "nginx": "RUNNING"}
        pids = [int(pid) for pid in re.findall(r"pid (\d+),", status.stdout)]

        stop = service_command(deployment, "stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert service.wait(timeout=60) == 0
        assert not any(alive(pid) for pid in pids), "a process outlived `stop`"
        assert service_command(deployment, "status").returncode != 0


def assert_connections_limited(url: str, limit: int) -> None:
    """Requests whose bodies have not arrived yet hold their connections; one more gets 429."""
    port = int(url.rsplit(":", 1)[1])
    held = []
    for _ in range(limit):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n")
        held.append(connection)
    try:
        wait_for(lambda: getattr(health(url), "status_code", None) == 429, 30, what="a 429")
        refused = httpx.get(url + "/health", timeout=5)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == 429
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: httpx.get(url + "/health", timeout=5).status_code == 200, 10, what="the limit to free up")


def stream_generate(url: str, started: threading.Event, results: dict, key: int) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": STREAM_TOKENS, "ignore_eos": True}
    text = ""
    try:
        with httpx.stream("POST", url + "/generate?streaming=true", json=body, timeout=120) as response:
            for chunk in response.iter_text():
                started.set()
                text += chunk
        results[key] = ("generate", response.status_code, text)
    except httpx.HTTPError as error:
        results[key] = ("generate", "cut", repr(error))


def stream_chat(url: str, started: threading.Event, results: dict, key: int) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    lines = []
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                started.set()
                if line:
                    lines.append(line)
        results[key] = ("chat", response.status_code, lines)
    except httpx.HTTPError as error:
        results[key] = ("chat", "cut", repr(error))


def test_sigterm_lets_running_streams_finish(model_dir, tokenizer):
    with running_service("drain", server={"drain_timeout_s": 120}) as deployment:
        service = deployment.processes[0][0]
        results: dict = {}
        starts = [threading.Event() for _ in range(8)]
        threads = [threading.Thread(target=stream_chat if i % 2 else stream_generate,
                                    args=(deployment.url, starts[i], results, i)) for i in range(8)]
        for thread in threads:
            thread.start()
        wait_for(lambda: all(event.is_set() for event in starts), 120, what="every stream's first bytes")
        service.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=180)
        assert service.wait(timeout=180) == 0
        assert len(results) == 8
        for kind, status, body in results.values():
            assert status == 200, body
            if kind == "chat":
                assert body[-1] == "data: [DONE]"
                usage = json.loads(body[-2].removeprefix("data: "))["usage"]
                assert usage["completion_tokens"] == STREAM_TOKENS
            else:
                assert '{"error"' not in body
                # Re-encoding detokenized text merges some tokens; a cut stream would be far shorter.
                assert len(tokenizer.encode(body)) > STREAM_TOKENS // 2, body


def test_a_process_that_cannot_start_ends_the_start_with_its_reason(model_dir):
    deployment = Deployment("port-taken")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", deployment.port))
        taken.listen()
        result = service_command(deployment, timeout=400)
        assert result.returncode != 0
        assert "error: nginx could not start" in result.stderr
        assert f"127.0.0.1:{deployment.port} failed (98: Address already in use)" in result.stderr
        assert not alive_in(deployment), "the rest of the service was stopped"
    finally:
        taken.close()
        shutil.rmtree(deployment.dir, ignore_errors=True)


def alive_in(deployment) -> bool:
    """A process of this deployment still runs (its directory is in its environment or command line)."""
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if str(deployment.dir).encode() in (process / "environ").read_bytes() + (process / "cmdline").read_bytes():
                return True
        except OSError:  # gone meanwhile
            pass
    return False
