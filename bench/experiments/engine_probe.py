"""The engine worker with timers on its loop, to see where a request's time goes inside it.

    PROBE_OUT=probe.json python -m bench.experiments.engine_probe        (as `python -m engine_worker`)
    python -m bench.zmq_bench --start-engine --engine-module bench.experiments.engine_probe ...

Measures, without changing the worker's code: how long each ADD waits in the inbox between
the request reader and the step loop (an ADD that arrives while `engine.step()` blocks waits for
that step to end), how long `engine.step()` takes, and the loop's own time around it.
Written to PROBE_OUT when the worker stops.
"""
import json
import os
import queue
import time

import numpy as np

from common.messages import Add
from engine_worker import __main__ as worker
from engine_worker import step_loop

inbox_waits: list[float] = []
engine_steps: list[float] = []
loop_steps: list[float] = []


class StampingQueue(queue.Queue):
    """The step loop's inbox, noting how long each ADD waited in it."""

    def _put(self, item):
        super()._put((time.perf_counter(), item))

    def _get(self):
        stamped, item = super()._get()
        if isinstance(item[1], Add):  # items are (time received, message)
            inbox_waits.append(time.perf_counter() - stamped)
        return item


def timed(function, into: list):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    return run


def install() -> None:
    original_init, original_step = step_loop.StepLoop.__init__, step_loop.StepLoop.step

    def init(self, engine, *args, **kwargs):
        original_init(self, engine, *args, **kwargs)
        self.inbox = StampingQueue()
        engine.step = timed(engine.step, engine_steps)

    step_loop.StepLoop.__init__ = init
    step_loop.StepLoop.step = timed(original_step, loop_steps)


def percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {}
    ms = np.asarray(values) * 1000
    return {"count": len(values), "mean": float(ms.mean()),
            **{f"p{p}": float(np.percentile(ms, p)) for p in (50, 90, 99)}}


def write_report(path: str) -> None:
    overhead = [loop - engine for loop, engine in zip(loop_steps, engine_steps)]
    report = {"inbox_wait_ms": percentiles_ms(inbox_waits), "engine_step_ms": percentiles_ms(engine_steps),
              "loop_overhead_ms": percentiles_ms(overhead)}
    with open(path, "w") as file:
        json.dump(report, file, indent=2)


def run_probed_worker() -> None:
    try:
        worker.run_engine_worker_process()
    finally:
        write_report(os.environ.get("PROBE_OUT", "engine-probe.json"))


if __name__ == "__main__":
    install()
    run_probed_worker()
