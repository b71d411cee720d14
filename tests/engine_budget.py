"""What the tests' vLLM engines cost: every engine worker a test deployment ran is read from its log
when the deployment closes, and the suite says at its end how many engines started and how long
they took to be ready, and fails when more became ready than the budget allows.

Starting vLLM is most of the end-to-end time (40-60 s a start on the 2-core CI machine), so a new
engine configuration is a cost every run pays. Before raising ENGINE_BUDGET, share an engine: a
test of a frontend-only setting (server.yml) runs as a frontend-only service on the session's
engine (`frontends_on` in tests/conftest.py), a test that kills something uses its module's victim
deployment, and a check of a request's shape or refusal belongs in tests/unit on the frontend
harness. Raise it only for a new engine configuration, in the commit that adds it, saying which.
"""
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

# Engines that became ready in a whole run of the end-to-end tests: the shared service 1, faults 3
# (its victim, restarted after a SIGKILL and after a SIGTERM), fleet 3 (two, one restarted), the
# engine crash loop 2, dashboard 1, gap 1, LoRA 1, two hosts 1, migration 6 (two, each restarted once:
# after the SIGKILL and after the SIGTERM its streams moved away from, then both by restart-engines),
# pooling 4 (the embedding and cross-encoder pools, and vLLM's own LLM.embed and LLM.score references,
# counted by the test itself; the embedding engine's restart after its SIGKILL is not waited for),
# images 1 (the tiny vision model's pool; its chat pool is the shared service's engine), tracing 1 (its
# engine worker exports spans and writes JSON lines from its start, and vLLM's own tracing is on).
ENGINE_BUDGET = 25

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ engine_worker\[(\d+)\] (.*)$", re.MULTILINE)
# The same lines with server.yml's log_format json (common/logs.py).
JSON_LINE = re.compile(r'^\{.*"logger": "engine_worker".*\}$', re.MULTILINE)


def worker_lines(log: str) -> list[tuple[str, str, str]]:
    """(time, process id, message) of each line the engine worker's own logger wrote, text or JSON."""
    found = LINE.findall(log)
    for line in map(json.loads, JSON_LINE.findall(log)):
        found.append((line["time"], str(line["process"]), line["message"]))
    return found


@dataclass
class EngineStart:
    deployment: str
    seconds: float  # from its first stage to ready, or to its last line if it never was
    ready: bool


STARTS: list[EngineStart] = []


def engine_starts(deployment: str, log: str) -> list[EngineStart]:
    """The vLLM engines a deployment's log shows: one per engine worker process that began loading
    vLLM (a simulated engine loads none), timed from its first stage."""
    lines: dict[str, list[tuple[datetime, str]]] = {}
    for stamp, pid, text in worker_lines(log):
        lines.setdefault(pid, []).append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), text))
    starts = []
    for pid_lines in lines.values():
        if not any(text.startswith("start 2/3: vLLM load") for _, text in pid_lines):
            continue
        began = next(at for at, text in pid_lines if text.startswith("start "))
        ready = next((at for at, text in pid_lines if re.match(r"engine \w+ ready", text)), None)
        ended = ready or pid_lines[-1][0]
        starts.append(EngineStart(deployment, (ended - began).total_seconds(), ready is not None))
    return starts


def record(deployment: str, logs: list[Path]) -> None:
    for log in logs:
        STARTS.extend(engine_starts(deployment, log.read_text(errors="replace")))


def ready_count() -> int:
    return sum(start.ready for start in STARTS)


def pytest_sessionfinish(session, exitstatus):
    if ready_count() > ENGINE_BUDGET:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not STARTS:
        return
    ready = [start for start in STARTS if start.ready]
    cut = [start for start in STARTS if not start.ready]
    by_deployment: dict[str, int] = {}
    for start in ready:
        by_deployment[start.deployment] = by_deployment.get(start.deployment, 0) + 1
    terminalreporter.section("vLLM engines")
    terminalreporter.line(f"{len(ready)} started and ready in {sum(s.seconds for s in ready):.0f} s "
                          f"(budget {ENGINE_BUDGET}): " + ", ".join(f"{n} {k}" for k, n in by_deployment.items()))
    if cut:
        terminalreporter.line(f"{len(cut)} more began and never became ready, in "
                              f"{sum(s.seconds for s in cut):.0f} s (failed on purpose, or stopped while loading)")
    if len(ready) > ENGINE_BUDGET:
        terminalreporter.line(f"over the budget of {ENGINE_BUDGET} engines: see tests/engine_budget.py", red=True)
