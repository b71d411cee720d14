"""Waking the step loop for whichever comes first: a message in its inbox, or the engine core's next
outputs.

vLLM's engine core schedules a step ahead of the one whose outputs it is returning (async
scheduling), so a request it receives only once the last step's outputs are back starts a step
later than one it receives while that step runs, as `vllm serve`'s requests do. While the step loop
waits for outputs, then, it adds what arrives: on vLLM's client of a separate engine core process,
the outputs wait in a queue that the client's own thread fills, and the bell rings on each.
"""
import queue
import threading
from collections.abc import Callable


class Doorbell:
    def __init__(self):
        self.event = threading.Event()

    def ring(self) -> None:
        self.event.set()

    def wait(self, timeout: float) -> None:
        """Until a ring since the last wait, or `timeout`; the caller checks what came after."""
        self.event.wait(timeout)
        self.event.clear()


class RingingQueue(queue.Queue):
    """A queue that rings a doorbell on each put."""

    def __init__(self, doorbell: Doorbell):
        super().__init__()
        self.doorbell = doorbell

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.doorbell.ring()


def ring_on_outputs(engine, doorbell: Doorbell) -> Callable[[], bool] | None:
    """Ring `doorbell` on each output the engine core sends; returns a check that one is waiting to be
    stepped, or None for an engine that steps in process (the simulated engine, vLLM in one process)."""
    outputs = getattr(getattr(engine, "engine_core", None), "outputs_queue", None)
    if not isinstance(outputs, queue.Queue):
        return None
    put = outputs.put_nowait

    def put_and_ring(item) -> None:
        put(item)
        doorbell.ring()

    outputs.put_nowait = put_and_ring  # the client's output thread puts each with put_nowait
    return lambda: not outputs.empty()
