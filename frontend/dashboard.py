"""The live dashboard: GET / serves the page (frontend/dashboard/, no CDN), GET /stats the figures it
polls every second.

/stats is built from the same collector as /metrics, so both say the same. It gives totals and
cumulative histogram buckets, never rates: nginx may send each poll to another frontend, so the page
computes rates and windowed percentiles from the difference between its own successive polls.
"""
import time
from collections import defaultdict
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from frontend.metrics import ServiceMetrics

PAGE_DIR = Path(__file__).resolve().parent / "dashboard"
HISTOGRAMS = {
    "ttft": "llm_time_to_first_token_seconds",
    "tpot": "llm_time_per_output_token_seconds",
    "e2e": "llm_e2e_request_latency_seconds",
}


async def dashboard_page(request: Request) -> Response:
    return FileResponse(PAGE_DIR / "index.html")


async def stats_endpoint(request: Request) -> Response:
    return JSONResponse(service_stats(request.app.state.frontend.client))


def dashboard_routes() -> list:
    return [
        Route("/", dashboard_page),
        Route("/stats", stats_endpoint),
        Mount("/dashboard", StaticFiles(directory=PAGE_DIR), name="dashboard"),
    ]


def service_stats(client) -> dict:
    samples = [sample for family in ServiceMetrics(client).collect() for sample in family.samples]
    total = totals(samples)
    welcome = client.welcome
    return {
        "time": time.time(),
        "model": welcome.model if welcome else None,
        "engine": {
            "up": bool(total["llm_engine_up"]),
            "running": total["llm_engine_running_requests"],
            "waiting": total["llm_engine_waiting_requests"],
            "kv_cache_usage": total["llm_engine_kv_cache_usage_ratio"],
        },
        "gpus": gpus(samples),
        "requests": {
            "finished": total["llm_requests_finished_total"],
            "aborted": total["llm_requests_aborted_total"],
            "failed": total["llm_requests_failed_total"],
            "in_flight": total["llm_requests_in_flight"],
            "queued": total["llm_requests_queued"],
        },
        "tokens": {"prompt": total["llm_prompt_tokens_total"], "generated": total["llm_generation_tokens_total"]},
        "latency": {key: buckets(samples, name) for key, name in HISTOGRAMS.items()},
    }


def totals(samples) -> defaultdict:
    """Each sample name's value added up over its labels (0 for a series not there)."""
    total = defaultdict(float)
    for sample in samples:
        total[sample.name] += sample.value
    return total


def buckets(samples, name: str) -> dict:
    """Finite upper bounds and cumulative counts, the +Inf bucket last (JSON has no Infinity)."""
    by_bound = sorted(
        (float(sample.labels["le"]), sample.value) for sample in samples if sample.name == name + "_bucket"
    )
    return {"bounds": [bound for bound, _ in by_bound[:-1]], "counts": [count for _, count in by_bound]}


def gpus(samples) -> list[dict]:
    by_index = defaultdict(dict)
    for sample in samples:
        if sample.name.startswith("llm_gpu_"):
            gpu = by_index[sample.labels["gpu"]]
            gpu["index"], gpu["name"] = int(sample.labels["gpu"]), sample.labels["name"]
            gpu[sample.name.removeprefix("llm_gpu_")] = sample.value
    return [by_index[index] for index in sorted(by_index, key=int)]
