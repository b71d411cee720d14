"""Unit tests of the dashboard's figures: the bounded history, rates over a window, percentiles from
histogram buckets, the sampling task that outlives its errors, and each engine's state from
supervisord's program state and the heartbeats."""
import asyncio
import logging

import pytest

from common.messages import EngineLoad
from frontend.dashboard.engine_state import EngineStateWatch, EngineView, Program, engine_entries
from frontend.dashboard.history import Buckets, History, Snapshot, every, increase, quantile

BOUNDS = [0.01, 0.1, 1.0]


def snapshot(time: float, generated: float = 0, prompt: float = 0, finished: float = 0,
             ttft_counts=(0, 0, 0, 0)) -> Snapshot:
    return Snapshot(
        time=time,
        counters={"prompt_tokens": prompt, "generation_tokens": generated, "finished": finished, "aborted": 0,
                  "failed": 0},
        gauges={"running": 1, "waiting": 0, "in_flight": 1, "queued": 0},
        histograms={"ttft": Buckets(BOUNDS, list(ttft_counts)), "tpot": Buckets(BOUNDS, [0, 0, 0, 0])},
        kv_cache_usage=[0.25],
        gpus=[],
    )


def test_the_history_keeps_the_last_900_points_oldest_first():
    history = History()
    for second in range(1000):
        history.record(snapshot(second))
    assert len(history.points) == 900
    assert [point["time"] for point in history.points] == list(range(100, 1000))
    assert history.latest["time"] == 999


def test_the_snapshots_kept_for_the_window_stay_few():
    history = History(rate_window_s=10)
    for second in range(1000):
        history.record(snapshot(second))
    assert len(history.snapshots) == 11  # the one 10 s back and the ten since


def test_bursts_make_a_steady_rate_over_the_window_not_a_saw_tooth():
    """1,800 tokens every 3 s: a per-second rate jumps between 0 and 1,800; over 10 s it is 600."""
    history = History(rate_window_s=10)
    generated = 0
    rates = []
    for second in range(60):
        if second % 3 == 0:
            generated += 1800
        rates.append(history.record(snapshot(second, generated=generated))["tokens_out"])
    steady = rates[12:]
    assert min(steady) >= 540 and max(steady) <= 720
    assert sum(steady) / len(steady) == pytest.approx(600, rel=0.05)


def test_the_first_point_has_no_rate_and_a_short_history_uses_what_it_has():
    history = History(rate_window_s=10)
    assert history.record(snapshot(0, generated=0))["tokens_out"] is None
    assert history.record(snapshot(1, generated=50, prompt=20))["tokens_out"] == 50
    point = history.record(snapshot(2, generated=150, prompt=20))
    assert point["tokens_out"] == 75
    assert point["tokens_in"] == 10


def test_a_counter_that_starts_again_from_zero_counts_what_it_has_since():
    assert increase([100, 150, 10, 30]) == 50 + 10 + 20
    history = History(rate_window_s=10)
    for second, generated in enumerate([100, 200, 300, 20, 120]):
        point = history.record(snapshot(second, generated=generated))
    assert point["tokens_out"] == (100 + 100 + 20 + 100) / 4


def test_requests_ended_is_a_rate_too():
    history = History(rate_window_s=10)
    for second in range(20):
        point = history.record(snapshot(second, finished=second * 3))
    assert point["ended"] == 3
    assert point["failed"] == 0


def test_quantile_interpolates_within_the_bucket_like_prometheus():
    # 10 observations up to 0.01 s, 10 more up to 0.1 s, none above
    assert quantile(0.5, BOUNDS, [10, 20, 20, 20]) == pytest.approx(0.01)
    assert quantile(0.75, BOUNDS, [10, 20, 20, 20]) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.99, BOUNDS, [0, 0, 0, 5]) == 1.0  # only +Inf: the highest bound is all we know
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None


def test_percentiles_cover_only_what_was_observed_within_the_window():
    history = History(rate_window_s=10)
    history.record(snapshot(0, ttft_counts=(0, 0, 100, 100)))  # slow first tokens, long ago
    for second in range(1, 12):
        point = history.record(snapshot(second, ttft_counts=(second * 10, second * 10, 100 + second * 10,
                                                             100 + second * 10)))
    p50, p90, p99 = point["ttft_ms"]
    assert p50 <= 10 and p99 <= 10  # only the fast ones of the last 10 s
    quiet = history.record(snapshot(12, ttft_counts=(110, 110, 210, 210)))
    assert quiet["ttft_ms"][0] <= 10
    for second in range(13, 30):  # nothing observed for 10 s: no percentile, a gap on the chart
        quiet = history.record(snapshot(second, ttft_counts=(110, 110, 210, 210)))
    assert quiet["ttft_ms"] == [None, None, None]


async def test_the_sampling_task_logs_an_error_and_goes_on(caplog):
    calls = []

    def sample():
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("a bad sample")

    with caplog.at_level(logging.ERROR, logger="frontend.dashboard.history"):
        task = asyncio.create_task(every(0.01, sample, "the test's sample"))
        while len(calls) < 5:
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
    assert "the test's sample failed" in caplog.text
    assert "a bad sample" in caplog.text


# Engine state: supervisord's program state and the heartbeats, over time.

def states(steps: list[tuple[Program | None, bool]]) -> list[str]:
    watch = EngineStateWatch()
    return [watch.state(program, fresh) for program, fresh in steps]


def test_an_engine_loading_is_starting_then_up():
    assert states([
        (Program("STARTING", 10), False),
        (Program("RUNNING", 10), False),  # past startsecs, still loading the model
        (Program("STARTING", 10), True),
        (Program("RUNNING", 10), True),
    ]) == ["starting", "starting", "up", "up"]


def test_an_engine_that_was_up_and_is_started_again_is_restarting():
    assert states([
        (Program("RUNNING", 10), True),
        (Program("EXITED", 0), False),
        (Program("STARTING", 11), False),
        (Program("BACKOFF", 0), False),
        (Program("STARTING", 12), False),
        (Program("RUNNING", 12), False),
        (Program("RUNNING", 12), True),
    ]) == ["up", "down", "restarting", "restarting", "restarting", "restarting", "up"]


def test_a_successor_still_loading_past_startsecs_is_restarting_not_down():
    assert states([
        (Program("RUNNING", 10), True),
        (Program("STARTING", 11), True),  # killed; its last heartbeat is still fresh
        (Program("STARTING", 11), False),
        (Program("RUNNING", 11), False),  # past startsecs, still loading
        (Program("RUNNING", 11), True),
    ]) == ["up", "up", "restarting", "restarting", "up"]


def test_an_engine_given_up_on_is_down_and_a_new_start_is_starting():
    assert states([
        (Program("RUNNING", 10), True),
        (Program("FATAL", 0), False),
        (Program("STOPPED", 0), False),
        (Program("STARTING", 13), False),
    ]) == ["up", "down", "down", "starting"]


def test_a_silent_engine_whose_process_still_runs_is_down():
    assert states([(Program("RUNNING", 10), True), (Program("RUNNING", 10), False)]) == ["up", "down"]


def test_without_supervisord_the_state_is_up_or_down_by_the_heartbeats():
    assert states([(None, False), (None, True), (None, False)]) == ["down", "up", "down"]


def test_engine_entries_one_per_engine_of_each_pool_with_its_program():
    load = EngineLoad(running=3, waiting=1, kv_cache_usage=0.5)
    views = [
        EngineView("chat", 0, ("engine-chat-0",), "abc", True, load),
        EngineView("chat", 1, ("engine-chat-1",), None, False, EngineLoad()),
        EngineView("embed", 0, (), "def", True, load),  # on another host: no program here
    ]
    programs = {"engine-chat-0": Program("RUNNING", 10), "engine-chat-1": Program("STARTING", 11)}
    entries = engine_entries(views, programs, {})
    assert [(entry["model"], entry["rank"], entry["state"], entry["program"]) for entry in entries] == [
        ("chat", 0, "up", "RUNNING"), ("chat", 1, "starting", "STARTING"), ("embed", 0, "up", None)]
    assert entries[0] | {"engine_id": "abc", "running": 3, "waiting": 1, "kv_cache_usage": 0.5} == entries[0]
    assert entries[1]["running"] is None and entries[1]["kv_cache_usage"] is None
    assert [entry["state"] for entry in engine_entries(views, None, {})] == ["up", "down", "up"]
