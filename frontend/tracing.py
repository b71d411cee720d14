"""Each HTTP request's id, log fields and, with server.yml's `tracing` on, its OpenTelemetry trace
(docs/tracing.md).

RequestTracing, a middleware, gives every request on every route an id (the `x-request-id` response
header, and the engine request ids of its generations), the fields its log lines carry, and when
tracing is on a SERVER span that continues the client's W3C `traceparent` (else starts a trace), with
a `read` span for its body; its trace id goes back in `x-trace-id`. The text layer adds `tokenize` and
`render` spans (`span`), and each generation a GenerationTrace: a `generate` span whose context rides
on the wire to the engine worker, with `route`, `queue` (until the first token) and `stream` spans.
Off, none of it makes an OpenTelemetry object: `span` and `generation` return at the first test."""
import contextlib
import contextvars
import logging
import time
import uuid
from dataclasses import dataclass

from common.logs import request_fields
from common.messages import TraceContext
from common.tracing import wire_context

log = logging.getLogger("frontend.requests")

# Probes, scrapes and the dashboard's polling: neither traced nor logged.
UNTRACED = ("/health", "/metrics", "/stats", "/dashboard/")

REQUEST_ID_HEADER = b"x-request-id"
TRACE_ID_HEADER = b"x-trace-id"


@dataclass
class RequestScope:
    """One HTTP request as its log lines and spans see it."""
    request_id: str
    log_fields: dict
    tracer: object = None
    span: object = None  # its SERVER span, when it is traced and sampled (recorded)
    generations: int = 0

    def generation_id(self) -> str:
        """The engine request id of its next generation: the request's id, then `<id>-1`, `<id>-2`, …"""
        count, self.generations = self.generations, self.generations + 1
        return self.request_id if not count else f"{self.request_id}-{count}"


_scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("request_scope", default=None)


def current() -> RequestScope | None:
    return _scope.get()


def new_request_id() -> str:
    scope = current()
    return scope.generation_id() if scope is not None else uuid.uuid4().hex


class RequestTracing:
    """Outermost but for the route metrics: every route gets an id and, traced, a span."""

    def __init__(self, app, tracer=None, log_requests: bool = False):
        self.app = app
        self.tracer = tracer
        self.log_requests = log_requests
        if tracer is not None:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
            self.propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNTRACED):
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        fields = {"request_id": request_id, "tenant": None, "trace_id": None}
        request = RequestScope(request_id, fields, self.tracer)
        headers = [(REQUEST_ID_HEADER, request_id.encode())]
        if self.tracer is not None:
            server_span = self.start_span(scope)
            trace_id = format(server_span.get_span_context().trace_id, "032x")
            fields["trace_id"] = trace_id
            headers.append((TRACE_ID_HEADER, trace_id.encode()))
            if server_span.is_recording():  # sampled: its children are recorded too
                request.span = server_span
                receive = self.timed_read(request, receive)
        status = 500  # what the client gets if the app raises before answering

        async def send_with_ids(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        started = time.perf_counter()
        scope_token, fields_token = _scope.set(request), request_fields.set(fields)
        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            if self.log_requests:
                log.info("%s %s %d in %.3f s", scope["method"], scope["path"][:200], status,
                         time.perf_counter() - started)
            _scope.reset(scope_token)
            request_fields.reset(fields_token)
            if request.span is not None:
                self.end_span(request.span, status)

    def start_span(self, scope):
        from opentelemetry.trace import SpanKind

        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
                   if name in (b"traceparent", b"tracestate")}
        parent = self.propagator.extract(carrier) if carrier else None
        path = scope["path"][:200]
        return self.tracer.start_span(f"{scope['method']} {path}", parent, SpanKind.SERVER, attributes={
            "http.request.method": scope["method"], "url.path": path})

    def timed_read(self, request: RequestScope, receive):
        """`receive` that records the body's reading as the `read` span, from its first part to its last."""
        started = None

        async def receive_timed():
            nonlocal started
            started = started or time.time_ns()
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                child(request, "read", started).end()
            return message

        return receive_timed

    @staticmethod
    def end_span(span, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def child(request: RequestScope, name: str, start_ns: int | None = None, parent=None, **attributes):
    return request.tracer.start_span(name, in_context(parent or request.span), start_time=start_ns,
                                     attributes=attributes)


@contextlib.contextmanager
def span(name: str, **attributes):
    """A span of the current request around the block (tokenize, render), when it is traced."""
    request = current()
    if request is None or request.span is None:
        yield
        return
    opened = child(request, name, **attributes)
    try:
        yield
    finally:
        opened.end()


class GenerationTrace:
    """One generation's spans: `generate` (its context goes to the engine), `route` each time the
    router places it, `queue` until its first token, `stream` from then to its end."""

    def __init__(self, request: RequestScope, request_id: str, prompt_tokens: int):
        from opentelemetry.trace import SpanKind

        self.request = request
        self.span = request.tracer.start_span("generate", in_context(request.span), SpanKind.CLIENT, attributes={
            "llm.request_id": request_id, "llm.prompt_tokens": prompt_tokens})
        self.wire: TraceContext | None = wire_context(self.span)
        self.placed_ns = time.time_ns()
        self.first_token_ns: int | None = None

    def routed(self, rank: int, engine_id: str | None, reason: str) -> None:
        now = time.time_ns()
        child(self.request, "route", self.placed_ns, self.span, **{
            "llm.engine.rank": rank, "llm.engine.id": engine_id or "", "llm.route.reason": reason}).end(now)
        self.span.set_attributes({"llm.engine.rank": rank, "llm.engine.id": engine_id or ""})
        self.placed_ns = now

    def moved(self, to_rank: int, cause: str, generated: int) -> None:
        self.span.add_event("migrated", {"llm.engine.rank": to_rank, "llm.migration.cause": cause,
                                         "llm.migration.generated_tokens": generated})

    def tokens_arrived(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.time_ns()
            child(self.request, "queue", self.placed_ns, self.span).end(self.first_token_ns)

    def end(self, finish_reason: str | None, completion_tokens: int, failure: BaseException | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        now = time.time_ns()
        if self.first_token_ns is not None:
            child(self.request, "stream", self.first_token_ns, self.span,
                  **{"llm.completion_tokens": completion_tokens}).end(now)
        self.span.set_attributes({"llm.completion_tokens": completion_tokens,
                                  "llm.finish_reason": finish_reason or ("error" if failure else "abort")})
        if failure is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"[:200]))
        self.span.end(now)


def generation(request_id: str, prompt_tokens: int) -> GenerationTrace | None:
    """The spans of a generation of the current request, when it is traced and sampled."""
    request = current()
    if request is None or request.span is None:
        return None
    return GenerationTrace(request, request_id, prompt_tokens)


def in_context(span):
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)
