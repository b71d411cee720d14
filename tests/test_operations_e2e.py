"""The service as `make serve` runs it, operated: a quiet start, a second start that refuses, status
from another shell, the connection limit, a stop that lets running streams finish, a start that
cannot finish, and setup's own stamp. The session's service is only read; what must stop or fail
runs as frontends of its own on its engine (`frontends_on`). Stopping a whole service from another
shell, engine included: tests/test_faults_e2e.py, on its victim."""
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
from tests.conftest import ENGINE_CPUS, alive_in, frontends_on, frontends_only, health, wait_for

STREAM_TOKENS = 48


def generate_requests_counted(url: str) -> float:
    metrics = httpx.get(url + "/metrics", timeout=10).text
    pattern = r'^llm_http_requests_total\{[^}]*route="/generate"[^}]*status="200"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def test_a_quiet_start_a_second_start_refused_and_status(service):
    process = service.processes[0][0]
    log = service.dir / "service.log"
    # The service answers before its start line reaches the log: wait for the line.
    wait_for(lambda: "serving on" in log.read_text(), 60, 0.5, "the service's start line in its log")
    text = log.read_text()
    start = text[: text.index("\n", text.index("serving on"))]  # what the start said, to its last line
    assert "CRIT" not in start
    assert not re.search(r"\[(error|emerg|crit|alert)\]", start), "nginx complained at start"
    assert "Uvicorn running on" not in start, "a frontend's own address presented as the service's"
    assert len(re.findall(r"frontend \S+ ready on 127\.0\.0\.1:\d+", start)) == 2
    assert re.search(r"engine \w+ ready", start)
    assert f"serving on {service.url}" in start

    httpx.post(service.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    counted = generate_requests_counted(service.url)
    second = service.service_command(timeout=60)
    assert second.returncode != 0
    assert f"a service already runs in {service.server['run_dir']}" in second.stderr
    assert f"service pid {process.pid}" in second.stderr and "supervisord pid" in second.stderr
    assert "serving on" not in second.stdout
    httpx.post(service.url + "/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert generate_requests_counted(service.url) == counted + 1, "the first service stopped counting"

    status = service.service_command("status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = dict(re.findall(r"^(\S+)\s+(\S+)", status.stdout, re.MULTILINE))
    assert rows == {"engine-0": "RUNNING", "frontend:frontend-0": "RUNNING",
                    "frontend:frontend-1": "RUNNING", "nginx": "RUNNING"}


def descendants(pid: int) -> list[int]:
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return children + [grandchild for child in children for grandchild in descendants(child)]


def test_the_engine_runs_on_its_engine_cpus_and_leaves_the_rest(service):
    """inference.yml's engine_cpus holds the engine worker, vLLM's engine core and its worker, and every
    thread of theirs (their OpenMP threads too), to those CPUs; the frontends may run anywhere."""
    engine = service.pid("engine-0")
    processes = [engine, *descendants(engine)]
    assert len(processes) >= 3  # the engine worker, vLLM's engine core, its worker
    threads = [int(task.name) for pid in processes for task in Path(f"/proc/{pid}/task").iterdir()]
    assert {tuple(sorted(os.sched_getaffinity(thread))) for thread in threads} == {tuple(ENGINE_CPUS)}
    assert os.sched_getaffinity(service.pid("frontend:frontend-0")) == os.sched_getaffinity(0)


def test_connections_past_the_limit_per_client_get_429(service):
    """Requests whose bodies have not arrived yet hold their connections; one more gets 429."""
    with frontends_on(service, "conn-limit", max_connections_per_client=4) as limited:
        held = []
        for _ in range(4):
            connection = socket.create_connection(("127.0.0.1", limited.port))
            connection.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 100\r\n\r\n")
            held.append(connection)
        try:
            wait_for(lambda: getattr(health(limited.url), "status_code", None) == 429, 30, what="a 429")
            refused = httpx.get(limited.url + "/health", timeout=5)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == 429
        finally:
            for connection in held:
                connection.close()
        wait_for(lambda: httpx.get(limited.url + "/health", timeout=5).status_code == 200, 10,
                 what="the limit to free up")


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


def test_sigterm_lets_running_streams_finish(service, tokenizer):
    with frontends_on(service, "drain", frontends=2, drain_timeout_s=120) as deployment:
        process = deployment.processes[0][0]
        results: dict = {}
        starts = [threading.Event() for _ in range(8)]
        threads = [threading.Thread(target=stream_chat if i % 2 else stream_generate,
                                    args=(deployment.url, starts[i], results, i)) for i in range(8)]
        for thread in threads:
            thread.start()
        wait_for(lambda: all(event.is_set() for event in starts), 120, what="every stream's first bytes")
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=180)
        assert process.wait(timeout=180) == 0
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


def test_a_process_that_cannot_start_ends_the_start_with_its_reason(service):
    deployment = frontends_only(service, "port-taken")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", deployment.port))
        taken.listen()
        result = deployment.service_command(timeout=400)
        assert result.returncode != 0
        assert "error: nginx could not start" in result.stderr
        assert f"127.0.0.1:{deployment.port} failed (98: Address already in use)" in result.stderr
        assert not alive_in(deployment), "the rest of the service was stopped"
    finally:
        taken.close()
        shutil.rmtree(deployment.dir, ignore_errors=True)


def run_setup(checkout: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(checkout / "venv"), "VLLM_TARGET": "none", "SETUP_MODEL": "0"}
    result = subprocess.run(["bash", "setup.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_setup_skips_itself_until_requirements_change(tmp_path):
    """setup.sh on a copy whose requirements are only pip, in a throwaway venv that sees the
    system's pip; vLLM is left out (VLLM_TARGET=none)."""
    shutil.copy(ROOT / "setup.sh", tmp_path)
    (tmp_path / "requirements.txt").write_text("pip\n")
    (tmp_path / "requirements-test.txt").write_text("pip\n")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(tmp_path / "venv")], check=True)
    log = tmp_path / ".setup.log"

    first = run_setup(tmp_path)
    assert "setup: the service's dependencies" in first.stdout and "done in" in first.stdout
    assert f"pip's output goes to {log}" in first.stdout
    assert "Requirement already satisfied: pip" in log.read_text()

    log.write_text("")
    second = run_setup(tmp_path)
    assert second.stdout == "" and log.read_text() == "", "nothing changed: no stage, no pip"

    (tmp_path / "requirements.txt").write_text("pip\n# a new requirement\n")
    third = run_setup(tmp_path)
    assert "setup: the service's dependencies" in third.stdout
    assert "Requirement already satisfied: pip" in log.read_text()
