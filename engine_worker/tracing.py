"""The engine worker's spans of a traced request (docs/tracing.md): `engine.request`, a child of the
frontend's `generate` span whose context came with the ADD, with `engine.admission`, `engine.queue`
(waiting in vLLM's scheduler), `engine.prefill` and `engine.decode` spans built from vLLM's own per-request timestamps once the
request ends, an `abort` event, and a `resumed` event for a request moved here from another engine.

The request reader's thread starts the request's span at admission (its context goes to vLLM as
trace_headers, so vLLM's own `llm_request` span joins the trace under it); the step thread only queues
how each traced request ended; a thread of its own builds and ends the spans. An untraced request costs
the step thread one dictionary lookup when it ends."""
import logging
import queue
import threading
import time
from typing import Any, NamedTuple

from common.messages import Add
from common.tracing import parent_of

log = logging.getLogger(__name__)


class Open(NamedTuple):
    span: Any
    received_at: float  # wall time, s


class Ended(NamedTuple):
    request_id: str
    at: float  # wall time, s
    finish_reason: str | None
    metrics: Any = None  # vLLM's RequestStateStats, when it keeps them
    error: str | None = None  # refused, or why it was aborted


class EngineTracing:
    def __init__(self, provider, engine_id: str):
        self.provider = provider
        self.tracer = provider.get_tracer("llm-serving")
        self.engine_id = engine_id
        self.open: dict[str, Open] = {}
        self.ended: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="tracing", daemon=True)
        self.thread.start()

    def admitted(self, add: Add, received_at: float) -> dict[str, str]:
        """On the request reader's thread: start the span of a traced ADD; returns vLLM's trace_headers."""
        from opentelemetry.trace import SpanKind

        span = self.tracer.start_span("engine.request", parent_of(add.trace), SpanKind.SERVER,
                                      start_time=ns(received_at), attributes={
                                          "llm.request_id": add.request_id, "llm.engine.id": self.engine_id,
                                          "llm.prompt_tokens": len(add.prompt_token_ids)})
        if add.resumed_tokens:
            span.add_event("resumed", {"llm.resumed_tokens": add.resumed_tokens}, ns(received_at))
        self.open[add.request_id] = Open(span, received_at)
        context = span.get_span_context()
        return {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}

    def finished(self, output) -> None:
        """On the step thread: a request vLLM finished."""
        if output.request_id in self.open:
            self.ended.put(Ended(output.request_id, time.time(), output.outputs[0].finish_reason,
                                 getattr(output, "metrics", None)))

    def stopped(self, request_ids: list[str], finish_reason: str, error: str) -> None:
        """A request refused ("error") or aborted ("abort") before vLLM finished it."""
        now = time.time()
        for request_id in request_ids:
            if request_id in self.open:
                self.ended.put(Ended(request_id, now, finish_reason, error=error))

    def run(self) -> None:
        while True:
            ended = self.ended.get()
            if ended is None:
                return
            try:
                self.end(ended)
            except Exception:  # a span lost, never the thread
                log.exception("could not end the span of request %s", ended.request_id)

    def end(self, ended: Ended) -> None:
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        span, received_at = self.open.pop(ended.request_id)
        context = set_span_in_context(span)
        end = ended.at
        stats = ended.metrics
        if stats is not None and stats.first_token_ts:
            wall = time.time() - time.monotonic()  # vLLM's engine core stamps with the monotonic clock
            queued, scheduled, first, last = (wall + t for t in (stats.queued_ts, stats.scheduled_ts,
                                                                 stats.first_token_ts, stats.last_token_ts))
            for name, start, stop in (("engine.admission", received_at, queued), ("engine.queue", queued, scheduled),
                                      ("engine.prefill", scheduled, first), ("engine.decode", first, last)):
                self.tracer.start_span(name, context, start_time=ns(start)).end(ns(max(stop, start)))
            span.set_attributes({"llm.completion_tokens": stats.num_generation_tokens,
                                 "llm.preemptions": stats.num_preemptions})
            end = last
        if ended.finish_reason == "abort":
            span.add_event("abort", {"llm.reason": ended.error or ""}, ns(ended.at))
            end = ended.at
        elif ended.finish_reason == "error":
            span.set_status(Status(StatusCode.ERROR, (ended.error or "")[:200]))
        span.set_attribute("llm.finish_reason", ended.finish_reason or "")
        span.end(ns(max(end, received_at)))

    def shutdown(self) -> None:
        """End the thread once it has ended every span queued, and export what is left."""
        self.ended.put(None)
        self.thread.join(timeout=5)
        self.provider.shutdown()


def ns(seconds: float) -> int:
    return int(seconds * 1e9)
