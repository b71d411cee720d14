"""Prometheus metrics of the whole service, served at GET /metrics.

Two sources, so that whichever frontend nginx picks for a scrape answers for the whole service:
- engine figures (running, waiting, KV cache use, engine token totals, GPUs) come from the engine's
  latest heartbeat, which every frontend receives: each frontend reports them alike;
- frontend figures (HTTP requests, generations, tokens, latencies) are written by every frontend
  into prometheus_client's multiprocess files in PROMETHEUS_MULTIPROC_DIR (set by supervisord,
  wiped at service start), and any frontend's scrape adds up the files of all of them. Without
  that directory (a frontend started on its own) the figures are this process's alone.
Every series of a model's generations and engines carries a `model` label, its served name: each
model's pool is watched on its own.
"""
import contextlib
import glob
import os
import re
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from frontend.migration import CAUSES, REFUSALS

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
# Multiprocess mode has no *_created series; a frontend on its own should say the same.
disable_created_metrics()
# Used only without MULTIPROC_DIR; in multiprocess mode the values live in the files.
LOCAL = CollectorRegistry()

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)

HTTP_REQUESTS = Counter("llm_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"], registry=LOCAL)
IN_FLIGHT = Gauge("llm_requests_in_flight", "Generations sent to the engine and not yet ended", ["model"],
                  multiprocess_mode="livesum", registry=LOCAL)
QUEUED = Gauge("llm_requests_queued", "Generations in flight that have no token yet (waiting or in prefill)",
               ["model"], multiprocess_mode="livesum", registry=LOCAL)
PROMPT_TOKENS = Counter("llm_prompt_tokens", "Prompt tokens of the generations sent to the engine", ["model"],
                        registry=LOCAL)
GENERATION_TOKENS = Counter("llm_generation_tokens", "Tokens the engine generated for the frontends", ["model"],
                            registry=LOCAL)
TTFT = Histogram("llm_time_to_first_token_seconds", "From sending a generation to its first token", ["model"],
                 buckets=TTFT_BUCKETS, registry=LOCAL)
TPOT = Histogram("llm_time_per_output_token_seconds",
                 "Per finished generation: (last token time - first token time) / (tokens - 1)", ["model"],
                 buckets=TPOT_BUCKETS, registry=LOCAL)
E2E = Histogram("llm_e2e_request_latency_seconds", "From sending a generation to its end, finished ones only",
                ["model"], buckets=E2E_BUCKETS, registry=LOCAL)
FINISHED = Counter("llm_requests_finished", "Generations that ended normally, by finish reason",
                   ["model", "finish_reason"], registry=LOCAL)
IMAGES = Counter("llm_request_images", "Images in requests, by source: inline (data URL, base64) or url (fetched)",
                 ["model", "source"], registry=LOCAL)
IMAGE_FETCHED_BYTES = Counter("llm_image_fetched_bytes", "Bytes of images fetched from allowed_media_domains URLs",
                              ["model"], registry=LOCAL)
ABORTED = Counter("llm_requests_aborted", "Generations given up because the client went away", ["model"],
                  registry=LOCAL)
FAILED = Counter("llm_requests_failed", "Generations that ended with an error, by reason", ["model", "reason"],
                 registry=LOCAL)
TIMEOUTS = Counter("llm_request_timeouts", "Generations ended by their request timeout, by whether they had a "
                   "token yet (queued: waiting or in prefill) or not (running)", ["model", "stage"], registry=LOCAL)
# Per tenant (docs/tenants.md): the label's values are the tenants of the configuration, so they are bounded.
TENANT_REQUESTS = Counter("llm_tenant_requests", "POST requests admitted, by tenant", ["tenant"], registry=LOCAL)
TENANT_LIMITED = Counter("llm_tenant_rate_limited", "Requests answered 429, by tenant and the limit reached "
                         "(max_concurrent, requests_per_minute, tokens_per_minute)", ["tenant", "limit"],
                         registry=LOCAL)
TENANT_TOKENS = Counter("llm_tenant_tokens", "Tokens of ended generations, by tenant and kind (prompt: computed; "
                        "cached: prompt tokens found in the prefix cache; output)", ["tenant", "kind"], registry=LOCAL)
TENANT_TIMEOUTS = Counter("llm_tenant_request_timeouts", "Generations ended by their request timeout, by tenant and "
                          "stage", ["tenant", "stage"], registry=LOCAL)
TENANT_IN_FLIGHT = Gauge("llm_tenant_requests_in_flight", "Generations sent to the engine and not yet ended, by "
                         "tenant", ["tenant"], multiprocess_mode="livesum", registry=LOCAL)
TENANT_TTFT = Histogram("llm_tenant_time_to_first_token_seconds", "From sending a generation to its first token",
                        ["tenant"], buckets=TTFT_BUCKETS, registry=LOCAL)
TENANT_E2E = Histogram("llm_tenant_e2e_request_latency_seconds", "From sending a generation to its end, finished "
                       "ones only", ["tenant"], buckets=E2E_BUCKETS, registry=LOCAL)
PRIORITY_IN_FLIGHT = Gauge("llm_priority_requests_in_flight", "Generations sent to the engine and not yet ended, "
                           "by priority class", ["priority"], multiprocess_mode="livesum", registry=LOCAL)
PRIORITY_QUEUED = Gauge("llm_priority_requests_queued", "Generations in flight that have no token yet (held back by "
                        "the engine worker, waiting in vLLM, or in prefill), by priority class", ["priority"],
                        multiprocess_mode="livesum", registry=LOCAL)
PRIORITY_TTFT = Histogram("llm_priority_time_to_first_token_seconds", "From sending a generation to its first token, "
                          "by priority class", ["priority"], buckets=TTFT_BUCKETS, registry=LOCAL)
ROUTED = Counter("llm_engine_routed_requests", "Generations sent to each engine, by why the router chose it "
                 "(pinned, prefix, load, round_robin, vllm_dp)", ["model", "engine", "reason"], registry=LOCAL)
CACHE_RESYNCS = Counter("llm_router_cache_resyncs", "Snapshots of an engine's prefix cache asked for because one "
                        "of its CachedBlocks reports never arrived", ["model", "engine"], registry=LOCAL)
LOAD_REPORTS_LOST = Counter("llm_router_load_reports_lost", "LoadReports of an engine that never arrived (seen "
                            "in their numbers)", ["model", "engine"], registry=LOCAL)
MIGRATIONS = Counter("llm_migrations", "Generations moved to another engine when theirs was lost, by cause "
                     "(crash, heartbeat, drain, stall, outputs_lost)", ["cause"], registry=LOCAL)
NOT_MOVED = Counter("llm_migrations_refused", "Generations whose engine was lost and that could not move, by why "
                    "(pinned, limit, grammar, no_engine)", ["reason"], registry=LOCAL)
STALLS = Counter("llm_engine_stalls", "Times an engine was seen to stall (steps not advancing, or silent while "
                 "connected), counted by each frontend that saw it", ["model", "engine"], registry=LOCAL)
for cause in CAUSES:
    MIGRATIONS.labels(cause)
for reason in REFUSALS:
    NOT_MOVED.labels(reason)


def open_series(model: str) -> None:
    """Every labelled series of a model exists from the start, at zero, so alerts and rates see it before
    its first event."""
    for gauge in (IN_FLIGHT, QUEUED):
        gauge.labels(model)
    for counter in (PROMPT_TOKENS, GENERATION_TOKENS, ABORTED):
        counter.labels(model)
    for reason in ("stop", "length"):
        FINISHED.labels(model, reason)
    # failure_reason() of generation's errors:
    for reason in ("engine_lost", "engine_refused", "request_timeout", "shutting_down"):
        FAILED.labels(model, reason)
    for stage in ("queued", "running"):
        TIMEOUTS.labels(model, stage)


class GenerationMeter:
    """Times one generation of a model and counts its tokens; `end()` files it under how it ended."""

    def __init__(self, model: str, prompt_tokens: int, tenant: str = "", priority: str = ""):
        self.model, self.tenant, self.priority = model, tenant, priority
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.tokens = 0
        self.finish_reason: str | None = None
        self.failure: BaseException | None = None
        IN_FLIGHT.labels(model).inc()
        QUEUED.labels(model).inc()
        PRIORITY_IN_FLIGHT.labels(priority).inc()
        PRIORITY_QUEUED.labels(priority).inc()
        TENANT_IN_FLIGHT.labels(tenant).inc()
        PROMPT_TOKENS.labels(model).inc(prompt_tokens)

    def tokens_arrived(self, count: int) -> None:
        if count == 0:
            return
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
            TTFT.labels(self.model).observe(now - self.started)
            TENANT_TTFT.labels(self.tenant).observe(now - self.started)
            PRIORITY_TTFT.labels(self.priority).observe(now - self.started)
            QUEUED.labels(self.model).dec()
            PRIORITY_QUEUED.labels(self.priority).dec()
        self.last_token_at = now
        self.tokens += count
        GENERATION_TOKENS.labels(self.model).inc(count)

    def end(self) -> None:
        IN_FLIGHT.labels(self.model).dec()
        PRIORITY_IN_FLIGHT.labels(self.priority).dec()
        TENANT_IN_FLIGHT.labels(self.tenant).dec()
        if self.first_token_at is None:
            QUEUED.labels(self.model).dec()
            PRIORITY_QUEUED.labels(self.priority).dec()
        if self.failure is not None:
            reason = failure_reason(self.failure)
            FAILED.labels(self.model, reason).inc()
            if reason == "request_timeout":
                stage = "queued" if self.first_token_at is None else "running"
                TIMEOUTS.labels(self.model, stage).inc()
                TENANT_TIMEOUTS.labels(self.tenant, stage).inc()
        elif self.finish_reason is not None:
            self.observe_finished()
        else:
            ABORTED.labels(self.model).inc()
        computed = max(self.prompt_tokens - self.cached_tokens, 0)
        for kind, tokens in (("prompt", computed), ("cached", self.cached_tokens), ("output", self.tokens)):
            TENANT_TOKENS.labels(self.tenant, kind).inc(tokens)

    def observe_finished(self) -> None:
        FINISHED.labels(self.model, self.finish_reason).inc()
        E2E.labels(self.model).observe(time.perf_counter() - self.started)
        TENANT_E2E.labels(self.tenant).observe(time.perf_counter() - self.started)
        if self.tokens > 1:
            TPOT.labels(self.model).observe((self.last_token_at - self.first_token_at) / (self.tokens - 1))


def open_priority_series(classes: list[str]) -> None:
    for name in classes:
        PRIORITY_IN_FLIGHT.labels(name)
        PRIORITY_QUEUED.labels(name)
        PRIORITY_TTFT.labels(name)


def open_tenant_series(tenants: set[str]) -> None:
    """Each tenant's series exist from the start (and from the reload that brings it), at zero."""
    for tenant in tenants:
        TENANT_REQUESTS.labels(tenant)
        TENANT_IN_FLIGHT.labels(tenant)
        for limit in ("max_concurrent", "requests_per_minute", "tokens_per_minute"):
            TENANT_LIMITED.labels(tenant, limit)
        for kind in ("prompt", "cached", "output"):
            TENANT_TOKENS.labels(tenant, kind)
        for stage in ("queued", "running"):
            TENANT_TIMEOUTS.labels(tenant, stage)


def failure_reason(error: BaseException) -> str:
    """EngineLost -> engine_lost: the exception's name is the reason, with no list to keep in step."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


class RouteMetricsMiddleware:
    """Counts every HTTP request under its route's path template ("/v1/models/{model}"), so new
    routes are covered without naming them here and paths that match nothing stay one series."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Before the app runs: routing rewrites the scope's root_path for mounted apps.
        route = route_template(scope)
        status = 500  # what the client gets if the app raises before answering

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()


def route_template(scope) -> str:
    partial = None
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:  # the path matched, the method did not
            partial = route.path
    return partial or "unmatched"


ENGINE_GAUGES = (
    ("llm_engine_running_requests", "Requests the engine is running", lambda load: load.running),
    ("llm_engine_waiting_requests", "Requests waiting in the engine's scheduler", lambda load: load.waiting),
    ("llm_engine_kv_cache_usage_ratio", "Share of the KV cache in use (0-1)", lambda load: load.kv_cache_usage),
    ("llm_engine_prefix_cache_hit_ratio", "Share of prompt tokens vLLM found in its prefix cache since it started",
     lambda load: load.prefix_cache_hits_total / load.prefix_cache_queries_total
     if load.prefix_cache_queries_total else 0.0),
)
ENGINE_COUNTERS = (
    ("llm_engine_prompt_tokens", "Prompt tokens the engine took since it started",
     lambda load: load.prompt_tokens_total),
    ("llm_engine_generation_tokens", "Tokens the engine generated since it started",
     lambda load: load.generation_tokens_total),
    ("llm_engine_prefix_cache_queries", "Prompt tokens looked up in the prefix cache since the engine started",
     lambda load: load.prefix_cache_queries_total),
    ("llm_engine_prefix_cache_hits", "Prompt tokens found in the prefix cache since the engine started",
     lambda load: load.prefix_cache_hits_total),
    ("llm_engine_preemptions", "Requests the engine preempted for want of KV blocks since it started",
     lambda load: load.preemptions_total),
)

# A simulated engine's time keeping: where busy runs ahead of modelled, the host did not keep up.
SIMULATED_COUNTERS = (
    ("llm_engine_simulated_modelled_seconds", "A simulated engine's steps: their modelled time x time_scale, "
     "in seconds since it started", lambda load: load.simulated_modelled_s_total),
    ("llm_engine_simulated_busy_seconds", "A simulated engine's steps: the wall time they took (and the time "
     "between them while requests were unfinished), in seconds since it started",
     lambda load: load.simulated_busy_s_total),
)


LOAD_VIEW_GAUGES = (
    ("llm_engine_queued_prefill_tokens", "Prompt tokens the engine has yet to prefill, net of its prefix-cache "
     "hits, as its last LoadReport gave them", lambda report: report.prefill_tokens),
    ("llm_engine_free_kv_blocks", "KV cache blocks no request holds, as the engine's last LoadReport gave them",
     lambda report: report.free_blocks),
    ("llm_engine_held_requests", "Requests of a priority class past its max_share that the engine worker holds "
     "back, as its last LoadReport gave them", lambda report: report.held),
)


def engine_families(clients):
    """Each engine's figures from its latest heartbeat, labelled model=<served name>, engine=<rank in its
    pool>; only `llm_engine_up`, `llm_engine_stalled` and `llm_engine_offline` for an engine that is down."""
    links = [(client.model, link) for client in clients for link in client.links]
    up = GaugeMetricFamily("llm_engine_up", "1 while the engine's heartbeats arrive", labels=["model", "engine"])
    stalled = GaugeMetricFamily("llm_engine_stalled", "1 while the engine is stalled: steps not advancing for "
                                "stall_timeout_s, or silent with its connection open", labels=["model", "engine"])
    offline = GaugeMetricFamily("llm_engine_offline", "1 while an operator has the engine out of routing",
                                labels=["model", "engine"])
    for model, link in links:
        up.add_metric([model, str(link.rank)], int(link.heartbeat_fresh()))
        stalled.add_metric([model, str(link.rank)], int(link.stalled))
        offline.add_metric([model, str(link.rank)], int(link.offline))
    yield from (up, stalled, offline)
    live = [([model, str(link.rank)], link) for model, link in links if link.heartbeat_fresh()]
    for kind, figures in ((GaugeMetricFamily, ENGINE_GAUGES), (CounterMetricFamily, ENGINE_COUNTERS)):
        for name, documentation, figure in figures:
            family = kind(name, documentation, labels=["model", "engine"])
            for labels, link in live:
                family.add_metric(labels, figure(link.load))
            yield family
    for name, documentation, figure in LOAD_VIEW_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=["model", "engine"])
        for labels, link in live:
            family.add_metric(labels, figure(link.load_view.report))
        yield family
    for name, documentation, figure in SIMULATED_COUNTERS:
        family = CounterMetricFamily(name, documentation, labels=["model", "engine"])
        for labels, link in live:
            if link.load.simulated_busy_s_total > 0:
                family.add_metric(labels, figure(link.load))
        yield family
    reported = GaugeMetricFamily("llm_engine_reported_cache_blocks", "Prompt blocks the engine reports in its "
                                 "prefix cache (router.placement exact), as this frontend last heard",
                                 labels=["model", "engine"])
    for labels, link in live:
        if link.cache_record.reporting:
            reported.add_metric(labels, len(link.cache_record))
    yield reported
    gpus = [(labels, gpu) for labels, link in live for gpu in link.load.gpus]
    if gpus:  # on a machine without GPU the GPU series are absent, not zero
        yield from gpu_families(gpus)


GPU_FIGURES = (
    ("llm_gpu_utilization_ratio", "GPU utilisation (0-1), from NVML", lambda gpu: gpu.utilization_pct / 100),
    ("llm_gpu_memory_used_bytes", "GPU memory in use", lambda gpu: gpu.memory_used_bytes),
    ("llm_gpu_memory_total_bytes", "GPU memory in all", lambda gpu: gpu.memory_total_bytes),
    ("llm_gpu_power_watts", "GPU power draw", lambda gpu: gpu.power_watts),
)


def gpu_families(gpus):
    for name, documentation, figure in GPU_FIGURES:
        family = GaugeMetricFamily(name, documentation, labels=["model", "engine", "gpu", "name"])
        for labels, gpu in gpus:
            family.add_metric([*labels, str(gpu.index), gpu.name], figure(gpu))
        yield family


class ServiceMetrics:
    """Everything /metrics reports, as one collector: all frontends' figures, then each pool's engines'."""

    def __init__(self, clients):
        self.clients = clients

    def collect(self):
        yield from (MultiProcessCollector(None) if MULTIPROC_DIR else LOCAL).collect()
        yield from engine_families(self.clients)


async def metrics_endpoint(request: Request) -> Response:
    clients = [pool.client for pool in request.app.state.frontend.pools]
    return Response(generate_latest(ServiceMetrics(clients)), media_type=CONTENT_TYPE_LATEST)


def forget_dead_processes() -> None:
    """Drop the in-flight gauges of frontends that died without saying so (killed, crashed): their
    counters stay, so totals never go back; their in-flight requests are gone."""
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")) if MULTIPROC_DIR else []:
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        if not process_alive(pid):
            with contextlib.suppress(FileNotFoundError):  # another frontend starting got there first
                mark_process_dead(pid, MULTIPROC_DIR)


def forget_this_process() -> None:
    if MULTIPROC_DIR:
        mark_process_dead(os.getpid(), MULTIPROC_DIR)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
