"""The two servers a side-by-side run compares, each started, awaited and stopped the same way:
ours (`python -m common.service` on its own server.yml and inference.yml) and `vllm serve`.

Both get the same model and the same vLLM engine arguments; each runs alone on the machine.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

from common.config import ROOT

BENCH_ADMIN_KEY = "bench-admin"  # ours' operator key in a bench's server.yml: the prefix-cache reset takes it


def engine_flags(engine_args: dict) -> list[str]:
    """conf/inference.yml's engine_args as `vllm serve` flags (the names are EngineArgs' own)."""
    flags = []
    for name, value in engine_args.items():
        option = name.replace("_", "-")
        if isinstance(value, bool):  # vLLM's boolean flags take a --no- form
            flags.append(f"--{option}" if value else f"--no-{option}")
        elif value is not None:
            flags += [f"--{option}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def answers(url: str, every_engine: bool = False) -> bool:
    """200 from a health URL; with every_engine, ours's /health also lists every engine up."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
            return not every_engine or all(engine["up"] for engine in json.loads(response.read())["engines"])
    except OSError:
        return False


class Server:
    """A process group started from a command line, with its log in the run directory."""

    name = "server"

    def __init__(self, out_dir: Path, port: int):
        self.run_dir = out_dir / self.name
        self.port = port
        self.process: subprocess.Popen | None = None
        self.log_path = self.run_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def reset_prefix_cache(self, timeout_s: float = 120.0) -> None:
        """Empty every engine's prefix cache, so that a run's hits are its own, not what earlier runs left.
        An engine still finishing a run's last requests refuses (ours: 409; vLLM: 200 with
        {"success": false}) and one not up answers 503: asked again until timeout_s."""
        url, headers = self.reset_request()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, b"", headers, method="POST"), timeout=60) as answer:
                    status, body = answer.status, answer.read()
            except urllib.error.HTTPError as error:
                status, body = error.code, error.read()
            if status == 200 and json.loads(body or b"{}").get("success", True):
                return
            if status not in (200, 409, 503) or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: POST {url} answered {status}: {body[:300]!r}")
            time.sleep(0.5)

    def reset_request(self) -> tuple[str, dict]:
        raise NotImplementedError

    def environment(self) -> dict:
        return os.environ.copy()

    def health_urls(self) -> list[str]:
        return [self.url + "/health"]

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.environment(), stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until every health URL answers 200; raises if the server dies or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            if all(answers(url, isinstance(self, OurService)) for url in self.health_urls()):
                return time.monotonic() - started
            time.sleep(1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s; see {self.log_path}")

    def processes(self) -> list[psutil.Process]:
        """The server and every process under it (supervisord's children, vLLM's engine core)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 60) -> None:
        """Stop the whole tree and wait until none of it is left: the next server needs the memory."""
        if self.process is None:
            return
        tree = self.processes()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)


def router_config(spec: str) -> dict:
    """server.yml's `router` for POLICY[/SCORE][/KEY=VALUE...]: POLICY prefix (exact placement), approximate
    (prefix, placed by what each frontend sent where), load, round_robin or vllm_dp; SCORE tokens or
    requests (router.load_score); KEY=VALUE any other router key, a number (affinity_window_ratio=1.5)."""
    policy, *parts = spec.split("/")
    config = {"placement": "approximate"} if policy == "approximate" else {"policy": policy}
    for part in parts:
        key, equals, value = part.partition("=")
        config |= {key: json.loads(value)} if equals else {"load_score": part}
    return config


def router_label(spec: str) -> str:
    """The router spec for a file name, a key's initials for each KEY=VALUE (supervisord's socket path
    under it must fit 108 bytes): prefix/affinity_window_ratio=1.5 -> prefix-awr1.5."""
    def short(part: str) -> str:
        key, equals, value = part.partition("=")
        return "".join(word[0] for word in key.split("_")) + value if equals else part
    return "-".join(short(part) for part in spec.split("/"))


class OurService(Server):
    """`python -m common.service` on a server.yml and inference.yml of its own; with `simulator` (inference.yml's
    `simulator:` section) every engine is a simulated one, `server` adds to server.yml and `inference` to
    inference.yml."""

    def __init__(self, out_dir: Path, port: int, model: str, engine_args: dict, frontends: int,
                 reuse_port: bool = False, cpu_kv_cache_gib: int = 2, engine_module: str = "engine_worker",
                 router: str = "prefix", cuda_visible_devices: str = "", simulator: dict | None = None,
                 server: dict | None = None, inference: dict | None = None):
        variant = "" if engine_module == "engine_worker" else "-" + engine_module.split("+")[0].rpartition(".")[2]
        dp = engine_args.get("data_parallel_size", 1)
        variant += (f"-dp{dp}" if dp > 1 else "") + ("" if router == "prefix" else "-" + router_label(router))
        variant += "-simulated" if simulator is not None else ""
        variant += "".join(f"-{key}-{value}".lower() for key, value in (inference or {}).items())
        self.name = f"ours-{frontends}fe{variant}"
        super().__init__(out_dir, port)
        self.frontends = frontends
        self.reuse_port = reuse_port
        self.engine_module = engine_module
        self.server_config = {
            "port": port, "frontends": frontends, "frontend_base_port": port + 1, "reuse_port": reuse_port,
            "run_dir": str(self.run_dir / "run"), "data_dir": str(ROOT / ".data"), "log_level": "warning",
            "router": router_config(router), "admin_api_key": BENCH_ADMIN_KEY,
        }
        self.server_config.update(server or {})
        # cuda_visible_devices "0,0" with data_parallel_size 2: both engines on GPU 0
        self.inference_config = {"model": model, "cpu_kv_cache_gib": cpu_kv_cache_gib, "engine_args": engine_args,
                                 "cuda_visible_devices": cuda_visible_devices}
        if simulator is not None:
            self.inference_config.update(engine_backend="simulated", simulator=simulator)
        self.inference_config.update(inference or {})

    def command(self) -> list[str]:
        (self.run_dir / "server.yml").write_text(yaml.safe_dump(self.server_config))
        (self.run_dir / "inference.yml").write_text(yaml.safe_dump(self.inference_config))
        if self.engine_module == "engine_worker":
            return [sys.executable, "-m", "common.service"]
        # ENGINE+FRONTEND: a module for each program
        return [sys.executable, "-m", "bench.service_with_engine", *self.engine_module.split("+")]

    def environment(self) -> dict:
        return {**os.environ, "SERVER_CONFIG": str(self.run_dir / "server.yml"),
                "INFERENCE_CONFIG": str(self.run_dir / "inference.yml"),
                "PROBE_OUT": str(self.run_dir / "engine-probe.json"), "TRACE_DIR": str(self.run_dir)}

    def reset_request(self) -> tuple[str, dict]:
        return self.url + "/admin/engines/reset_prefix_cache", {
            "authorization": f"Bearer {self.server_config['admin_api_key']}"}

    def pid(self, program: str) -> int:
        """The pid of one of supervisord's programs (engine-3, frontend-0, ...)."""
        conf = self.run_dir / "run" / "supervisord.conf"
        answer = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "pid", program],
                                capture_output=True, text=True, check=True)
        return int(answer.stdout.strip())

    def health_urls(self) -> list[str]:
        if self.reuse_port:  # the frontends share one port: ask often enough to reach each
            return [self.url + "/health"] * (4 * self.frontends)
        # nginx's port first: the frontends answer before nginx may listen
        return [self.url + "/health", *(f"http://127.0.0.1:{self.port + 1 + i}/health" for i in range(self.frontends))]


class VllmServe(Server):
    def __init__(self, out_dir: Path, port: int, model: str, engine_args: dict, api_servers: int,
                 cpu_kv_cache_gib: int = 2, module: str = ""):
        dp = engine_args.get("data_parallel_size", 1)
        variant = "-" + module.rpartition(".")[2] if module else ""
        self.name = f"vllm-serve-{api_servers}api" + (f"-dp{dp}" if dp > 1 else "") + variant
        super().__init__(out_dir, port)
        self.model = model
        self.engine_args = engine_args
        self.api_servers = api_servers
        self.cpu_kv_cache_gib = cpu_kv_cache_gib
        self.module = module  # runs `python -m MODULE serve ...` in place of vLLM's CLI

    def command(self) -> list[str]:
        program = ["-m", self.module] if self.module else [str(ROOT / "bench" / "vllm_cli.py")]
        return [sys.executable, *program, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                "--api-server-count", str(self.api_servers), *engine_flags(self.engine_args)]

    def environment(self) -> dict:
        # VLLM_SERVER_DEV_MODE: vLLM's own POST /reset_prefix_cache (with its other development routes)
        return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib), "TRACE_DIR": str(self.run_dir),
                "VLLM_SERVER_DEV_MODE": "1"}

    def reset_request(self) -> tuple[str, dict]:
        return self.url + "/reset_prefix_cache", {}
