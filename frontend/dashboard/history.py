"""The dashboard's memory: the service's totals sampled once a second, and the last 15 minutes of
chart points made from them, so a page opened at any moment starts with what already happened.

A point holds rates and percentiles over a window of samples (RATE_WINDOW_S), never over one
second: requests end and prompts arrive in bursts, and a one-second rate jumps between 0 and the
burst. Counters that go back (a frontend started alone and restarted) count from zero again, as
Prometheus' increase() does.
"""
import asyncio
import logging
import time
from collections import deque
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
HISTORY_S = 900
RATE_WINDOW_S = 10.0
PERCENTILES = (0.5, 0.9, 0.99)


class Buckets(NamedTuple):
    """A histogram's finite upper bounds and its cumulative counts, +Inf last."""
    bounds: list[float]
    counts: list[float]


class Snapshot(NamedTuple):
    """The service's figures at one moment: totals as /metrics reports them."""
    time: float
    counters: dict[str, float]  # prompt_tokens, generation_tokens, finished, aborted, failed
    gauges: dict[str, float | None]  # running, waiting, in_flight, queued (None: no engine to ask)
    histograms: dict[str, Buckets]  # ttft, tpot (seconds)
    kv_cache_usage: list[float | None]  # per engine, by rank
    gpus: list[dict]  # per GPU: utilization_ratio, memory_used_bytes, ...


def increase(values: list[float]) -> float:
    """How much a counter grew over successive samples; a drop means it started again from zero."""
    return sum(now - before if now >= before else now for before, now in zip(values, values[1:]))


def windowed_rate(samples: list, pick: Callable) -> float | None:
    """Per second, from the first sample of the window to the last; None from a single sample."""
    seconds = samples[-1].time - samples[0].time
    if seconds <= 0:
        return None
    return increase([pick(sample) for sample in samples]) / seconds


def quantile(q: float, bounds: list[float], counts: list[float]) -> float | None:
    """Like Prometheus' histogram_quantile: linear within the bucket that holds the rank."""
    total = counts[-1] if counts else 0
    if not total:
        return None
    rank = q * total
    index = next(index for index, count in enumerate(counts) if count >= rank)
    if index >= len(bounds):  # in the +Inf bucket: the highest finite bound is all we know
        return bounds[-1]
    lower = bounds[index - 1] if index else 0.0
    below = counts[index - 1] if index else 0.0
    in_bucket = counts[index] - below
    return lower + (bounds[index] - lower) * (rank - below) / in_bucket if in_bucket else lower


def windowed_percentiles_ms(samples: list, name: str) -> list[float | None]:
    """p50, p90, p99 of what was observed within the window, in milliseconds."""
    if len(samples) < 2:
        return [None] * len(PERCENTILES)
    first, last = samples[0].histograms[name], samples[-1].histograms[name]
    first_counts = first.counts if len(first.counts) == len(last.counts) else [0.0] * len(last.counts)
    counts = [increase([before, now]) for before, now in zip(first_counts, last.counts)]
    return [None if (value := quantile(q, last.bounds, counts)) is None else round(value * 1000, 3)
            for q in PERCENTILES]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def chart_point(samples: list) -> dict:
    """What the page charts for the newest snapshot, its windows reaching back over `samples`."""
    newest = samples[-1]

    def rate(*names):
        return rounded(windowed_rate(samples, lambda snapshot: sum(snapshot.counters[name] for name in names)))

    return {
        "time": round(newest.time, 3),
        "tokens_in": rate("prompt_tokens"),
        "tokens_out": rate("generation_tokens"),
        "ended": rate("finished", "aborted", "failed"),
        "failed": rate("failed"),
        "aborted": rate("aborted"),
        **newest.gauges,
        "kv_cache_usage": [rounded(value, 4) for value in newest.kv_cache_usage],
        "ttft_ms": windowed_percentiles_ms(samples, "ttft"),
        "tpot_ms": windowed_percentiles_ms(samples, "tpot"),
        "gpu_utilization": [rounded(gpu["utilization_ratio"], 4) for gpu in newest.gpus],
        "gpu_memory_used_bytes": [gpu["memory_used_bytes"] for gpu in newest.gpus],
    }


class History:
    """The last `HISTORY_S / SAMPLE_INTERVAL_S` chart points, oldest first, and the few snapshots
    their windows need. Bounded: old points fall off the far end."""

    def __init__(self, points: int = int(HISTORY_S / SAMPLE_INTERVAL_S), rate_window_s: float = RATE_WINDOW_S):
        self.points: deque[dict] = deque(maxlen=points)
        self.rate_window_s = rate_window_s
        self.snapshots: deque[Snapshot] = deque()

    def record(self, snapshot: Snapshot) -> dict:
        self.snapshots.append(snapshot)
        # Keep one snapshot at or before the window's start, so the window always spans it whole.
        while len(self.snapshots) > 1 and self.snapshots[1].time <= snapshot.time - self.rate_window_s:
            self.snapshots.popleft()
        point = chart_point(list(self.snapshots))
        self.points.append(point)
        return point

    @property
    def latest(self) -> dict | None:
        return self.points[-1] if self.points else None


async def every(interval_s: float, work: Callable, what: str) -> None:
    """Run `work` (a function or a coroutine function) every interval until cancelled. An error is
    logged and the next round goes on: the dashboard's figures must not stop for one bad sample."""
    next_round = time.monotonic()
    while True:
        try:
            result = work()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("%s failed; trying again in %g s", what, interval_s)
        next_round = max(next_round + interval_s, time.monotonic())
        await asyncio.sleep(next_round - time.monotonic())
