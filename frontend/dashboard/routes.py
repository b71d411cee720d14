"""The live dashboard: GET / serves the page (page/, no CDN), GET /stats its figures.

/stats is built from the same collector as /metrics, so both say the same. Every frontend reads
the whole service's figures (the shared multiprocess files and the engine's heartbeat), so each
keeps the same history (history.py), sampled once a second in the background, and any of them
can answer a page, whichever one nginx picks:
- `GET /stats`: the service's totals now (one collection, as a /metrics scrape makes), each
  engine's state, and the newest chart point: a few kilobytes, polled by the page every second;
- `GET /stats?history=1`: the same, plus the last 15 minutes of chart points (asked once, when
  the page opens).
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
from frontend.dashboard.history import SAMPLE_INTERVAL_S, Buckets, History, Snapshot, every
from frontend.metrics import ServiceMetrics

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

    def __init__(self, state):
        self.state = state
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
            "point": self.history.latest,
        }
        if with_history:
            body["history"] = list(self.history.points)
        return body


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
