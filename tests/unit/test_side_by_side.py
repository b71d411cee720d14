"""bench/side_by_side.py's load syntax, its summary of repeated loads, its router and inference.yml specs,
and its pinning of vLLM's engine core."""
import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import msgspec
import psutil
import pytest

from bench.services import BENCH_ADMIN_KEY, OurService, VllmServe, router_config, router_label
from bench.side_by_side import (
    Load, make_server, median_lines, parse_args, parse_cpu_list, parse_load, pin_engine_core,
)
from common.config import ServerConfig


def test_a_load_with_repeats_and_prompts():
    assert parse_load("128x64@16/96*3", min_prompts=8, repeats=1) == Load(128, 64, 16, 96, 3)
    assert parse_load("128x64@1", min_prompts=8, repeats=2) == Load(128, 64, 1, 8, 2)


def run(server: str, repeat: int, tok_s: float, ttft: float, repeats: int = 3, error: bool = False) -> dict:
    load = {"input_len": 128, "output_len": 64, "concurrency": 16, "prompts": 96, "repeats": repeats}
    result = {"error": "exited"} if error else {
        "output_throughput": tok_s, "median_ttft_ms": ttft, "median_tpot_ms": 5.0, "median_itl_ms": 4.0}
    return {"server": server, "load": load, "repeat": repeat, "result": result}


def test_repeated_loads_give_the_median_of_their_runs_with_the_range():
    rows = [run("ours-2fe", 1, 300, 40), run("ours-2fe", 2, 320, 90), run("ours-2fe", 3, 310, 50),
            run("vllm-serve-1api", 1, 290, 30), run("vllm-serve-1api", 2, 0, 0, error=True)]
    assert median_lines(rows) == [
        "| ours-2fe | 128/64 | 16 | 3 | 310 (300–320) | 50.00 (40.00–90.00) | 5.00 (5.00–5.00) | 4.00 (4.00–4.00) |",
        "| vllm-serve-1api | 128/64 | 16 | 1 | 290 (290–290) | 30.00 (30.00–30.00) | 5.00 (5.00–5.00) | "
        "4.00 (4.00–4.00) |",
    ]


def test_single_runs_have_no_median_line():
    assert median_lines([run("ours-2fe", 1, 300, 40, repeats=1)]) == []


def test_a_router_spec_becomes_server_yml_router_keys():
    assert router_config("prefix") == {"policy": "prefix"}
    assert router_config("approximate") == {"placement": "approximate"}
    assert router_config("vllm_dp") == {"policy": "vllm_dp"}
    assert router_config("prefix/requests") == {"policy": "prefix", "load_score": "requests"}
    assert router_config("prefix/affinity_window_ratio=1.5/affinity_window_tokens=4096") == {
        "policy": "prefix", "affinity_window_ratio": 1.5, "affinity_window_tokens": 4096}
    for spec in ("prefix", "approximate/requests", "load/tokens", "round_robin", "vllm_dp",
                 "prefix/affinity_window_ratio=0"):
        msgspec.convert({"router": router_config(spec)}, ServerConfig)  # keys server.yml accepts
    # in a file name, a key by its initials: supervisord's socket path under it must fit 108 bytes
    assert router_label("prefix/affinity_window_ratio=1.5") == "prefix-awr1.5"


def test_a_server_spec_can_set_a_key_of_inference_yml(tmp_path):
    args = argparse.Namespace(model=str(tmp_path), engine_args={}, reuse_port=False, cpu_kv_cache_gib=2,
                              cuda_visible_devices="")
    plain = make_server("ours:4:bench.experiments.request_trace+bench.experiments.request_trace~resume_grammars=false",
                        args, tmp_path, 7000)
    assert plain.inference_config["resume_grammars"] is False
    assert plain.name == "ours-4fe-request_trace-resume_grammars-false"
    assert "resume_grammars" not in make_server("ours:4", args, tmp_path, 7000).inference_config


ENGINE_CORE_LIKE = ("import setproctitle, subprocess, sys, time; "
                    "setproctitle.setproctitle('VLLM::EngineCore'); time.sleep(30)")


def test_pinning_puts_the_engine_core_on_its_cores_and_the_rest_elsewhere():
    """A real parent and child process, the child named as vLLM names its engine core process."""
    cores = sorted(os.sched_getaffinity(0))
    assert parse_cpu_list("0-2,5") == [0, 1, 2, 5]
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {ENGINE_CORE_LIKE!r}]); time.sleep(30)"])
    try:
        server = SimpleNamespace(name="test", processes=lambda: [psutil.Process(parent.pid),
                                                                 *psutil.Process(parent.pid).children()])
        deadline = time.monotonic() + 20
        while not any(p.name().startswith("VLLM::") for p in server.processes()[1:]):
            assert time.monotonic() < deadline, "the engine-core-like child did not start"
            time.sleep(0.05)
        pin_engine_core(server, str(cores[-1]))
        core = server.processes()[1]
        assert os.sched_getaffinity(core.pid) == {cores[-1]}
        assert os.sched_getaffinity(parent.pid) == set(cores[:-1]) or len(cores) == 1
    finally:
        for process in server.processes():
            process.kill()


class ResettingServer(http.server.BaseHTTPRequestHandler):
    """A fake server (for this test only) whose reset route refuses while `busy` runs remain, as an engine
    still finishing a run's last requests answers 409."""

    busy = 0
    calls: list[tuple[str, str | None]] = []

    def do_POST(self):
        type(self).calls.append((self.path, self.headers.get("authorization")))
        busy, type(self).busy = type(self).busy > 0, max(type(self).busy - 1, 0)
        if self.path == "/reset_prefix_cache":  # vLLM's: 200 either way, saying whether it emptied
            self.answer(200, json.dumps({"success": not busy}).encode())
        else:
            self.answer(409 if busy else 200, b'{"emptied": [0]}')

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_each_server_empties_its_prefix_caches_on_its_own_route_asking_again_while_an_engine_is_busy(tmp_path):
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), ResettingServer) as fake:
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        port = fake.server_address[1]
        ResettingServer.busy = 2
        ours = OurService(tmp_path, port, "m", {}, frontends=1)
        ours.reset_prefix_cache()
        assert ResettingServer.calls == [("/admin/engines/reset_prefix_cache", f"Bearer {BENCH_ADMIN_KEY}")] * 3
        assert ours.server_config["admin_api_key"] == BENCH_ADMIN_KEY
        ResettingServer.calls.clear()
        ResettingServer.busy = 1
        vllm = VllmServe(tmp_path, port, "m", {}, api_servers=1)
        vllm.reset_prefix_cache()
        assert ResettingServer.calls == [("/reset_prefix_cache", None)] * 2
        assert vllm.environment()["VLLM_SERVER_DEV_MODE"] == "1"
        ResettingServer.busy = 5
        with pytest.raises(RuntimeError, match="answered 409"):
            ours.reset_prefix_cache(timeout_s=1)
        with pytest.raises(RuntimeError, match="success.: false"):
            vllm.reset_prefix_cache(timeout_s=0.5)
        fake.shutdown()


def test_the_caches_are_emptied_before_each_run_unless_kept():
    assert parse_args(["--model", "m"]).keep_prefix_cache is False
    assert parse_args(["--model", "m", "--keep-prefix-cache"]).keep_prefix_cache is True
