"""The suite's count of vLLM engines (tests/engine_budget.py), read from logs written the way an
engine worker writes them: common.logs' format, its stages, its ready line."""
import io
import logging

from common.logs import FORMAT, json_formatter, stage
from tests.engine_budget import engine_starts


def worker_log(pid: int, *steps) -> str:
    """What engine worker process `pid` logs, `steps` run against its logger."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(lambda record: setattr(record, "process", pid) or True)
    log = logging.getLogger("engine_worker")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for step in steps:
            step(log)
    finally:
        log.removeHandler(handler)
    return text.getvalue()


def stages(*names):
    def run(log):
        for name in names:
            with stage(log, name):
                pass
    return run


def ready(log):
    log.info("engine %s ready (rank %d): requests on %s, outputs on %s", "3f2a", 0, "ipc://a", "ipc://b")


def test_a_vllm_engine_counts_once_ready_and_a_cut_one_as_never_ready():
    loaded = worker_log(11, stages("start 1/3: model", "start 2/3: vLLM load (weights, KV cache, compilation)"), ready)
    cut = worker_log(12, stages("start 1/3: model"), lambda log: log.info("start 2/3: vLLM load (weights) ..."))
    starts = engine_starts("service", loaded + cut)
    assert [(start.deployment, start.ready) for start in starts] == [("service", True), ("service", False)]
    assert all(start.seconds >= 0 for start in starts)


def test_a_simulated_engine_is_no_vllm_start():
    simulated = worker_log(13, stages("start 1/3: model", "start 2/3: simulated engine (profile.json)"), ready)
    assert engine_starts("simulated", simulated) == []


def test_an_engine_logging_json_lines_counts_too():
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(json_formatter())
    log = logging.getLogger("engine_worker")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        stages("start 1/3: model", "start 2/3: vLLM load (weights, KV cache, compilation)")(log)
        ready(log)
    finally:
        log.removeHandler(handler)
    (start,) = engine_starts("json", text.getvalue())
    assert start.ready
