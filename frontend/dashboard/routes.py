"""The live dashboard: GET / serves the page (page/, no CDN), GET /stats its figures.

/stats is built from the same collector as /metrics, so both say the same. Every frontend reads
the whole service's figures (the shared multiprocess files and the engine's heartbeat), so each
keeps the same history (history.py), sampled once a second in the background, and any of them
can answer a page, whichever one nginx picks:
- `GET /stats`: the service's totals now (one collection, as a /metrics scrape makes), each
  engine's state, and the newest chart point: a few kilobytes, polled by the page every second;
- `GET /stats?history=1`: the same, plus the last 15 minutes of chart points (asked once, when
  the page opens).
Its `tenants` rows: each tenant's totals from the llm_tenant_* series, and its use of the fleet in this
minute of the wall clock beside its quotas, as the engines report it (frontend/quotas.py).
"""
import asyncio
import time
from collections import defaultdict
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from frontend.dashboard.engine_state import EngineStateWatch, SupervisorPrograms, engine_entries, engine_views
from frontend.dashboard.history import SAMPLE_INTERVAL_S, Buckets, History, Snapshot, every, quantile, rounded
from frontend.metrics import ServiceMetrics
from frontend.quotas import counted_tokens, current_minute, fleet_use

PAGE_DIR = Path(__file__).resolve().parent / "page"
HISTOGRAMS = {
    "ttft": "llm_time_to_first_token_seconds",
    "tpot": "llm_time_per_output_token_seconds",
    "e2e": "llm_e2e_request_latency_seconds",
}
COUNTERS = {
    "prompt_tokens": "llm_prompt_tokens_total",
    "generation_tokens": "llm_generation_tokens_total",
    "finished": "llm_requests_finished_total",
    "aborted": "llm_requests_aborted_total",
    "failed": "llm_requests_failed_total",
}


class Dashboard:
    """One frontend's dashboard figures: its history, and each engine's state."""

    def __init__(self, state, tenants=None):
        self.state = state
        self.tenants = tenants  # frontend/tenants.py's Tenants: whose rows the tenant table has
        self.history = History()
        self.programs = SupervisorPrograms(state.server.path(state.server.run_dir))
        self.watches: dict[tuple[str, int], EngineStateWatch] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(every(SAMPLE_INTERVAL_S, self.programs.refresh, "asking supervisord for the engines")),
            asyncio.create_task(every(SAMPLE_INTERVAL_S, self.sample, "the dashboard's sample")),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.programs.close()

    def engines(self) -> list[dict]:
        return engine_entries(engine_views(self.clients), self.programs.latest(), self.watches)

    @property
    def clients(self) -> list:
        return [pool.client for pool in self.state.pools]

    async def sample(self) -> None:
        samples = await asyncio.to_thread(collect, self.clients)
        self.history.record(snapshot(samples, self.engines(), time.time()))

    def stats(self, samples: list, with_history: bool) -> dict:
        total = totals(samples)
        models = [pool.model for pool in self.state.pools if pool.model]
        body = {
            "time": time.time(),
            "model": ", ".join(models) or None,
            "models": models,
            "engines": self.engines(),
            "gpus": gpus(samples),
            "requests": {
                "finished": total["llm_requests_finished_total"],
                "aborted": total["llm_requests_aborted_total"],
                "failed": total["llm_requests_failed_total"],
                "in_flight": total["llm_requests_in_flight"],
                "queued": total["llm_requests_queued"],
            },
            "tokens": {"prompt": total["llm_prompt_tokens_total"], "generated": total["llm_generation_tokens_total"]},
            "latency": {key: buckets(samples, name)._asdict() for key, name in HISTOGRAMS.items()},
            "tenants": self.tenant_rows(samples, time.time()),
            "point": self.history.latest,
        }
        if with_history:
            body["history"] = list(self.history.points)
        return body

    def tenant_rows(self, samples: list, now: float) -> list[dict]:
        """Per tenant: requests, 429s, timeouts, generations in flight and TTFT p50 since the frontends
        started, and what it used in this minute over the whole fleet against its quotas (0: none)."""
        if self.tenants is None:
            return []
        figures, ttft = defaultdict(lambda: defaultdict(float)), defaultdict(lambda: defaultdict(float))
        for sample in samples:
            if (tenant := sample.labels.get("tenant")) is None:
                continue
            if sample.name == "llm_tenant_time_to_first_token_seconds_bucket":
                ttft[tenant][float(sample.labels["le"])] += sample.value
            else:
                figures[tenant][sample.name] += sample.value
        limits = {tenant.name: tenant for tenant in self.tenants.ring.values()} | {
            self.tenants.anonymous.name: self.tenants.anonymous}
        reports, minute = self.state.load_reports(), current_minute(now)
        weight = self.state.server.cached_token_weight
        return [tenant_row(name, figures[name], ttft[name], limits.get(name), fleet_use(reports, name, minute),
                           weight) for name in sorted(self.tenants.names())]


async def dashboard_page(request: Request) -> Response:
    return FileResponse(PAGE_DIR / "index.html")


async def stats_endpoint(request: Request) -> Response:
    dashboard: Dashboard = request.app.state.dashboard
    with_history = request.query_params.get("history", "") not in ("", "0", "false")
    # Reading the multiprocess files and encoding 15 minutes of points are the slow parts (tens of
    # milliseconds on a busy CPU): on a worker thread, so the streams on the event loop go on.
    samples = await asyncio.to_thread(collect, dashboard.clients)
    return await asyncio.to_thread(JSONResponse, dashboard.stats(samples, with_history))


def dashboard_routes() -> list:
    return [
        Route("/", dashboard_page),
        Route("/stats", stats_endpoint),
        Mount("/dashboard", StaticFiles(directory=PAGE_DIR), name="dashboard"),
    ]


def tenant_row(name: str, figures: dict, ttft: dict, tenant, use, cached_token_weight: float) -> dict:
    bounds = sorted(ttft)
    p50 = quantile(0.5, bounds[:-1], [ttft[bound] for bound in bounds])
    return {
        "name": name,
        "requests": figures.get("llm_tenant_requests_total", 0.0),
        "rate_limited": figures.get("llm_tenant_rate_limited_total", 0.0),
        "timeouts": figures.get("llm_tenant_request_timeouts_total", 0.0),
        "in_flight": figures.get("llm_tenant_requests_in_flight", 0.0),
        "ttft_p50_ms": None if p50 is None else rounded(p50 * 1000),
        "minute": {"requests": use.requests, "prompt_tokens": use.prompt_tokens, "cached_tokens": use.cached_tokens,
                   "output_tokens": use.output_tokens, "tokens": counted_tokens(use, cached_token_weight)},
        "quota": {"requests_per_minute": tenant.requests_per_minute if tenant else 0,
                  "tokens_per_minute": tenant.tokens_per_minute if tenant else 0},
    }


def collect(clients) -> list:
    return [sample for family in ServiceMetrics(clients).collect() for sample in family.samples]


def snapshot(samples: list, engines: list[dict], now: float) -> Snapshot:
    total = totals(samples)
    up = [engine for engine in engines if engine["running"] is not None]

    def engines_sum(key):  # None, not 0, when no engine answers: the chart shows a gap
        return sum(engine[key] for engine in up) if up else None

    return Snapshot(
        time=now,
        counters={key: total[name] for key, name in COUNTERS.items()},
        gauges={
            "running": engines_sum("running"),
            "waiting": engines_sum("waiting"),
            "in_flight": total["llm_requests_in_flight"],
            "queued": total["llm_requests_queued"],
        },
        histograms={key: buckets(samples, HISTOGRAMS[key]) for key in ("ttft", "tpot")},
        kv_cache_usage=[engine["kv_cache_usage"] for engine in engines],
        gpus=gpus(samples),
    )


def totals(samples) -> defaultdict:
    """Each sample name's value added up over its labels (0 for a series not there)."""
    total = defaultdict(float)
    for sample in samples:
        total[sample.name] += sample.value
    return total


def buckets(samples, name: str) -> Buckets:
    """Finite upper bounds and cumulative counts, the +Inf bucket last (JSON has no Infinity)."""
    by_bound = defaultdict(float)  # added up over the models
    for sample in samples:
        if sample.name == name + "_bucket":
            by_bound[float(sample.labels["le"])] += sample.value
    bounds = sorted(by_bound)
    return Buckets(bounds[:-1], [by_bound[bound] for bound in bounds])


def gpus(samples) -> list[dict]:
    by_index = defaultdict(dict)
    for sample in samples:
        if sample.name.startswith("llm_gpu_"):
            gpu = by_index[sample.labels["gpu"]]
            gpu["index"], gpu["name"] = int(sample.labels["gpu"]), sample.labels["name"]
            gpu[sample.name.removeprefix("llm_gpu_")] = sample.value
    return [by_index[index] for index in sorted(by_index, key=int)]
