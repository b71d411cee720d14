"""vLLM's own per-request timings, read from a server's /metrics before and after a load.

Both servers carry vLLM's vllm:* histograms in /metrics (ours through the engine worker's stat
logger), measured by the same vLLM code on both sides, so they split a TTFT the client sees into
where it was spent: waiting in the engine core's queue, prefill, and the rest (HTTP, tokenizing,
the hops to the core); ours also has the frontend's own TTFT, which splits the rest into the
frontend's work and the hops to the engine worker and back. Histograms give exact means; their
buckets are too coarse for medians.
"""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# vLLM's names: time from arrival to first token, in the scheduler's waiting queue, from first
# scheduled to first token, and from arrival to the end.
HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
    "decode": "vllm:request_decode_time_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
    # Ours only: from the frontend's ADD to the first token back at the frontend. Against vLLM's TTFT
    # (from the ADD's arrival at the engine worker) it gives the hops in and out of the worker.
    "frontend_ttft": "llm_time_to_first_token_seconds",
}


def metrics_text(url: str, timeout: float = 10) -> str:
    """A server's /metrics page."""
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as response:
        return response.read().decode()


def scrape(url: str) -> dict:
    return histograms(metrics_text(url))


def histograms(text: str) -> dict:
    """{histogram name: {"sum": s, "count": n}} of a /metrics page,
    summed over label sets (vllm serve with several API servers, engine index)."""
    wanted = set(HISTOGRAMS.values())
    found: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        histogram = found.setdefault(family.name, {"sum": 0.0, "count": 0.0})
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                histogram["sum"] += sample.value
            elif sample.name.endswith("_count"):
                histogram["count"] += sample.value
    return found


def difference(before: dict, after: dict) -> dict:
    """What one load added to each histogram."""
    delta = {}
    for name, late in after.items():
        early = before.get(name, {"sum": 0.0, "count": 0.0})
        delta[name] = {"sum": late["sum"] - early["sum"], "count": late["count"] - early["count"]}
    return delta


def summarize(delta: dict) -> dict:
    """{"ttft": {"count": n, "mean_ms": m}, "queue": ..., ...} for what is present."""
    summary = {}
    for short, name in HISTOGRAMS.items():
        histogram = delta.get(name)
        if not histogram or histogram["count"] <= 0:
            continue
        summary[short] = {"count": int(histogram["count"]), "mean_ms": 1000 * histogram["sum"] / histogram["count"]}
    return summary


def scrape_counters(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """{counter family name: value}, summed over label sets, for the counters named."""
    text = metrics_text(url)
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in names:
            found[family.name] = sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return found
