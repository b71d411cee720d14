"""Experiment: the engine worker's loop with one event queue, so an ADD reaches vLLM at once.

The worker's loop alternates `take_requests()` and `engine.step()`, and `engine.step()` blocks until
the engine core's next output: an ADD that arrives meanwhile waits in the inbox for up to a whole
step (a prefill step of a large batch takes 50 to 200 ms on the GPU host). Here vLLM's output
thread also puts a marker into the inbox whenever an output arrives, and the loop handles whatever
comes first: requests go to the core the moment they arrive, each output is read when it is there.
Run as the engine module (`python -m bench.experiments.eager_intake`), with
bench.experiments.engine_probe's timers on.
"""
import queue

from bench.experiments import engine_probe
from engine_worker.step_loop import StepLoop

OUTPUT_READY = object()


def wake_on_output(engine, inbox: queue.Queue) -> None:
    """Make every output the core sends (vLLM's SyncMPClient queue) also wake the step loop."""
    outputs = engine.engine_core.outputs_queue
    put = outputs.put_nowait

    def put_and_wake(item):
        put(item)
        inbox.put((0.0, OUTPUT_READY))

    outputs.put_nowait = put_and_wake


def run(self: StepLoop) -> None:
    while not self.stopping:
        try:
            received_at, message = self.inbox.get(timeout=self.idle_wait_s)
        except queue.Empty:
            self.load.record_idle()
            continue
        if message is OUTPUT_READY:
            self.step()  # one output is waiting, so this does not block
        else:
            self.handle(received_at, message)
    self.abort_all("the engine is shutting down")


def install() -> None:
    engine_probe.install()
    probed_init = StepLoop.__init__

    def init(self, engine, *args, **kwargs):
        probed_init(self, engine, *args, **kwargs)
        wake_on_output(engine, self.inbox)

    StepLoop.__init__ = init
    StepLoop.run = run


if __name__ == "__main__":
    install()
    engine_probe.run_probed_worker()
