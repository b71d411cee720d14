"""The simulated-fleet benches' arithmetic, on made-up figures: what a run's /metrics add up to, the host's
time-keeping verdict, the oracle's placements, the ladder's stages and targets, the suite's (d) verdict over
repeats, the calibration's ratios and the served terms it fits."""
import asyncio
import json
import random
from dataclasses import replace
from types import SimpleNamespace

import msgspec
import pytest
import zmq

from bench import calibrate_simulator, llmd_ladder, sim_fleet, vllm_timings
from bench.fleet_client import CUT, Outcome
from bench.fleet_workloads import PromptMaker, SharedPrefixPrompts, poisson_times
from bench.oracle import Oracle
from bench.routing_suite import SMALL, frontend_counts, ideal_hit_rate
from bench.sim_fleet import FleetSpec, difference, engine_figures, fleet_service, host_verdict, make_oracle, spread
from common.blocks import block_hashes
from common.messages import BROADCAST_TOPIC, CachedBlocks, EngineLoad, Goodbye, Heartbeat, encode
from common.step_time import StepTime, load_profile


def test_a_runs_engine_figures_are_what_its_counters_moved():
    before = {"queries": {0: 100, 1: 0}, "hits": {0: 50, 1: 0}, "prompt_tokens": {0: 100, 1: 0},
              "generation_tokens": {0: 10, 1: 0}, "modelled_s": {0: 1.0, 1: 0.0}, "busy_s": {0: 1.0, 1: 0.0},
              "routed": {(0, "prefix"): 3}}
    after = {"queries": {0: 300, 1: 200}, "hits": {0: 250, 1: 50}, "prompt_tokens": {0: 300, 1: 200},
             "generation_tokens": {0: 30, 1: 40}, "modelled_s": {0: 10.0, 1: 8.0}, "busy_s": {0: 11.0, 1: 8.0},
             "routed": {(0, "prefix"): 5, (1, "load"): 2}}
    figures = engine_figures(difference(before, after), 2)
    assert figures["prefix_cache_hit_rate"] == pytest.approx(250 / 400)
    assert figures["requests_by_engine"] == [2, 2] and figures["routing"] == {"load": 2, "prefix": 2}
    assert figures["work_by_engine"] == [(200 - 200) + 20, (200 - 50) + 40]  # prompt tokens computed + generated
    assert figures["time_kept_by_engine"] == {0: pytest.approx(9 / 10), 1: 1.0}
    assert figures["time_kept"] == pytest.approx(17 / 18)
    assert spread([1, 1, 4]) == 2.0
    # An engine restarted during the run counts from zero.
    assert difference({"hits": {0: 500}}, {"hits": {0: 20}}) == {"hits": {0: 20}}


def test_a_run_whose_engines_or_client_fell_behind_says_so():
    summary = {"time_kept_by_engine": {0: 0.99, 1: 0.97}, "time_kept": 0.98, "client_lag_p99_s": 0.001}
    assert host_verdict(summary) == (True, "host kept time (98.0% of the modelled step time)")
    kept, why = host_verdict({**summary, "time_kept_by_engine": {0: 0.99, 1: 0.80}, "client_lag_p99_s": 0.5})
    assert not kept
    assert "1 engines kept under 95% of the modelled time (engine 1: 80%)" in why and "late (p99 0.500 s)" in why


def test_poisson_arrivals_and_shared_prefix_prompts_repeat_with_their_seeds():
    times = poisson_times(10.0, 100.0, random.Random(1), start_s=5.0)
    assert times == poisson_times(10.0, 100.0, random.Random(1), start_s=5.0)
    assert all(5.0 <= t < 105.0 for t in times) and 900 < len(times) < 1100 and times == sorted(times)
    prompts = SharedPrefixPrompts(PromptMaker(list(range(100, 200)), seed=3), groups=3, users=2, system_len=32,
                                  question_len=8, draw_seed=4)
    assert len(prompts.prompts) == 6 and all(len(p) == 40 for p in prompts.prompts)
    assert prompts.prompts[0][:32] == prompts.prompts[1][:32] != prompts.prompts[2][:32]
    sent = [session.turns[0].prompt for session in prompts.requests([0.0] * 20, 5)]
    again = SharedPrefixPrompts(PromptMaker(list(range(100, 200)), seed=9), 3, 2, 32, 8, draw_seed=4)
    # Other tokens, the same draws: runs compared with each other send the same sequence of prompts.
    assert [prompts.prompts.index(p) for p in sent] == \
        [again.prompts.index(s.turns[0].prompt) for s in again.requests([0.0] * 20, 5)]


def test_the_ideal_hit_rate_keeps_each_group_on_one_engine_that_never_evicts():
    system = list(range(32))
    first, second = system + [100] * 16, system + [200] * 16
    # first: nothing; second: the system prompt; first again: all but its last token, in whole blocks.
    assert ideal_hit_rate([first, second, first], users=2, system_len=32) == pytest.approx((32 + 32) / 144)


def oracle(engines: int = 2, max_num_seqs: int = 4) -> Oracle:
    return Oracle([f"ipc:///nowhere-{rank}" for rank in range(engines)], block_size=4, max_num_seqs=max_num_seqs)


class FakeFleetRun:
    """A fake fleet for (d): each send answers the next of the given TTFT p90s, every hit rate 90%."""

    def __init__(self, p90s: list[float]):
        self.p90s, self.sent_through, self.sent = list(p90s), [], []

    def empty_prefix_caches(self):
        pass

    def frontend_urls(self, count: int) -> list[str]:
        return [f"http://frontend-{index}" for index in range(count)]

    def send(self, sessions, urls):
        self.sent_through.append(len(urls))
        self.sent.append([(turn.delay_s, turn.prompt) for session in sessions for turn in session.turns])
        return {"prefix_cache_hit_rate": 0.9, "ttft_s": {"p90": self.p90s.pop(0)}, "failed": 0,
                "host_kept_up": True, "host_verdict": "kept"}


def test_d_takes_turns_over_the_frontend_counts_and_judges_each_on_its_median():
    size = replace(SMALL, frontend_counts=(1, 2), frontends_repeats=3, frontends_s=1.0)
    maker = PromptMaker(list(range(1000)), seed=0)
    # One slow run of 2 frontends (the host's noise) is outvoted by its other two.
    run = FakeFleetRun([0.100, 0.104, 0.100, 0.200, 0.100, 0.103])
    verdict = frontend_counts(run, size, maker)
    assert run.sent_through == [1, 2, 1, 2, 1, 2]
    assert verdict.passed and "2 frontends: hits 90.0%, TTFT p90 0.104 s (0.103–0.200)" in verdict.measured
    assert len(verdict.runs) == 6
    # Two slow runs of 2 frontends are the count's median: (d) fails.
    assert not frontend_counts(FakeFleetRun([0.100, 0.110, 0.100, 0.200, 0.100, 0.103]), size, maker).passed


def test_a_suite_repeat_draws_other_arrivals_and_prompts_and_seed_0_those_of_before():
    def sent(seed: int) -> list:
        run = FakeFleetRun([0.1, 0.1])
        frontend_counts(run, replace(SMALL, seed=seed), PromptMaker(list(range(1000)), seed=0))
        return run.sent[0]

    first = sent(0)
    assert sent(0) == first
    assert first[0][0] == poisson_times(2.0 * SMALL.engines, SMALL.frontends_s, random.Random(4))[0]
    other = sent(1)
    assert [delay for delay, _ in other] != [delay for delay, _ in first]
    assert [prompt for _, prompt in other] != [prompt for _, prompt in first]


def test_the_oracle_keeps_a_prefix_on_its_engine_while_its_queue_is_within_the_window():
    placer = Oracle(["ipc:///nowhere-0", "ipc:///nowhere-1"], block_size=4, max_num_seqs=4, window_tokens=64)
    shared = list(range(40))
    placer.held[1].update(block_hashes(shared, 4))  # engine 1 reported it holds the prefix
    assert placer.place(shared + [1, 2, 3, 4], 8) == 1
    assert placer.queued_prefill == [0, 4]  # only the new block is computed there
    placer.queued_prefill[1] = 64  # at the window's edge: it stays
    assert placer.place(shared + [5, 6, 7, 8], 8) == 1
    assert placer.queued_prefill[1] == 68  # past it: the least queued engine, which computes it all
    assert placer.place(shared + [9, 10, 11, 12], 8) == 0 and placer.queued_prefill[0] == 44
    # What it sent to 0 counts as held there at once, before any report.
    assert placer.cached_tokens(0, block_hashes(shared, 4)) == 40
    # A prompt nobody holds: the least queued (44 tokens against 68).
    assert placer.place(list(range(100, 140)), 8) == 0


def test_the_oracle_counts_prefill_until_the_first_token_and_forgets_what_ended():
    placer = oracle(max_num_seqs=1)
    prompt = list(range(8))
    first = placer.place(prompt, 4)
    second = placer.place(list(range(50, 58)), 4)
    assert {first, second} == {0, 1}  # one sequence slot each
    placer.first_token(first)
    assert placer.queued_prefill[first] == 0
    placer.ended(first, prompt, SimpleNamespace(first_token_at=1.0))
    assert placer.in_flight[first] == 0 and not placer.sent[first]


def test_the_oracle_of_a_fleet_listens_where_each_of_its_engines_publishes(tmp_path):
    spec = FleetSpec(engines=3, policy="oracle")
    service = fleet_service(spec, tmp_path, 7380)
    run_dir = service.server_config["run_dir"]
    assert make_oracle(spec, service).addresses == [
        f"ipc://{run_dir}/engine-outputs", f"ipc://{run_dir}/engine-1-outputs", f"ipc://{run_dir}/engine-2-outputs"]


async def test_the_oracle_reads_each_engines_cache_reports_from_its_pub_socket(tmp_path):
    address = f"ipc://{tmp_path}/engine-outputs"
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.bind(address)
    placer = Oracle([address], block_size=4, max_num_seqs=4)
    starting = asyncio.create_task(placer.start(timeout_s=10))
    try:
        while not starting.done():  # until the subscription takes effect and a heartbeat arrives
            publisher.send_multipart([BROADCAST_TOPIC, encode(Heartbeat("e", EngineLoad()))])
            await asyncio.sleep(0.05)
        await starting
        for message in (CachedBlocks("e", 1, stored=[1, 2, 3], removed=[]), CachedBlocks("e", 2, stored=[4], removed=[2]),
                        Goodbye("e")):
            publisher.send_multipart([BROADCAST_TOPIC, encode(message)])
        for _ in range(100):
            if placer.held[0] == {1, 3, 4}:
                break
            await asyncio.sleep(0.02)
        assert placer.held[0] == {1, 3, 4}
        publisher.send_multipart([BROADCAST_TOPIC, encode(CachedBlocks("e", 3, stored=[7], removed=[], cleared=True))])
        for _ in range(100):
            if placer.held[0] == {7}:
                break
            await asyncio.sleep(0.02)
        assert placer.held[0] == {7}
    finally:
        await placer.stop()
        publisher.close(linger=0)


def outcome(planned: float, start: float, first: float | None, end: float | None, tokens: int = 10,
            error: str | None = None) -> Outcome:
    return Outcome(start=start, first_token_at=first, end=end, output_tokens=tokens, planned_at=planned, error=error)


def test_each_ladder_stage_is_measured_by_itself_and_a_request_cut_off_waits_at_least_its_wait():
    spec = FleetSpec(engines=2, time_scale=2.0)
    stages = [llmd_ladder.Stage(2.0, 10.0, warm_up=True), llmd_ladder.Stage(4.0, 10.0)]
    bounds = [0.0, 10.0, 20.0]
    reads = [{"generation_tokens": {0: 0, 1: 0}, "queries": {0: 0}, "hits": {0: 0}},
             {"generation_tokens": {0: 100, 1: 100}, "queries": {0: 100}, "hits": {0: 50}},
             {"generation_tokens": {0: 300, 1: 500}, "queries": {0: 300}, "hits": {0: 250},
              "running": {0: 3, 1: 4}, "waiting": {0: 0, 1: 6}}]
    started = 1000.0
    outcomes = [outcome(1002, 1002, 1004, 1010),  # warm-up: TTFT 1 s simulated
                outcome(1030, 1030, 1031, 1049),  # stage 1: TTFT 0.5 s, TPOT (18 / 2) / 9 = 1 s
                outcome(1038, 1038, None, None, 0, CUT)]  # cut off at the run's end (1049): waited 5.5 s
    summary = {"started": started, "before": reads[0], "scrapes": reads[1:], "outcomes": outcomes}
    warm, stage = llmd_ladder.stage_figures(summary, stages, bounds, spec)
    assert warm["warm_up"] and warm["requests"] == 1 and warm["ttft_p50_s"] == 1.0
    assert warm["output_throughput"] == 20.0 and warm["prefix_cache_hit_rate"] == 0.5
    assert warm["running_at_end"] is None and warm["waiting_at_end"] is None  # its read had no gauges
    assert stage["requests"] == 2 and stage["completed"] == 1 and stage["failed"] == 0
    assert stage["ttft_censored"] == 1 and stage["ttft_p50_s"] == pytest.approx((0.5 + 5.5) / 2)
    assert stage["tpot_p50_s"] == pytest.approx(1.0)
    assert stage["output_throughput"] == 60.0 and stage["prefix_cache_hit_rate"] == 1.0
    assert stage["rate_per_engine"] == 2.0
    assert stage["running_at_end"] == 7 and stage["waiting_at_end"] == 6  # the fleet's, at the stage's end


def ladder_run(policy: str, throughputs: list[float], ttft_p90: list[float], hits: float) -> dict:
    return {"engines": 8, "policy": policy, "stages": [
        {"warm_up": False, "rate": rate, "output_throughput": tok_s, "ttft_p90_s": ttft, "ttft_p50_s": ttft / 2,
         "tpot_p50_s": 0.02, "prefix_cache_hit_rate": hits, "time_kept": 0.99, "ttft_censored": 0}
        for rate, tok_s, ttft in zip((8, 16, 24), throughputs, ttft_p90)]}


def test_the_ladder_takes_medians_over_repeats_and_checks_the_targets():
    runs = [ladder_run("prefix", [8000, 16000, 24000], [0.3, 0.4, 0.6], 0.80),
            ladder_run("prefix", [8000, 16000, 22000], [0.3, 0.5, 0.9], 0.82),
            ladder_run("prefix", [8000, 15000, 23000], [0.3, 0.5, 0.7], 0.81),
            ladder_run("round_robin", [8000, 10000, 11000], [0.5, 50, 150], 0.20),
            ladder_run("vllm_dp", [8000, 12000, 12000], [0.5, 30, 120], 0.20),
            ladder_run("oracle", [8000, 16000, 24000], [0.3, 0.4, 0.5], 0.90)]
    table = llmd_ladder.medians(runs)
    top = next(row for row in table if row["policy"] == "prefix" and row["rate"] == 24)
    assert top["runs"] == 3 and top["output_throughput"] == 23000 and top["output_throughput_range"] == (22000, 24000)
    assert top["ttft_p90_s"] == 0.7
    lines = llmd_ladder.targets(table, 8)
    assert "peak output throughput 2.09x round_robin's (target 2.0x): met" in lines[0]
    assert "peak output throughput 1.92x vllm_dp's (target 1.3x): met" in lines[1]
    assert "0.70 s against round_robin's 150.0 s" in lines[2] and lines[2].endswith(": met")
    assert "81.0% against the oracle's 90.0% (target within 5 points): NOT met" in lines[3]


def real_row(repeat: int, tok_s: float, ttft: float, tpot: float, hits: float | None) -> dict:
    load = {"input_len": 128, "output_len": 1024, "concurrency": 64, "prompts": 128, "repeats": 3}
    return {"server": "ours-2fe", "load": load, "repeat": repeat,
            "result": {"output_throughput": tok_s, "median_ttft_ms": ttft, "median_tpot_ms": tpot,
                       "prefix_cache_hit_rate": hits}}


def test_the_calibration_sets_the_simulated_medians_beside_the_real_ones():
    results = [real_row(1, 1000, 100, 10, 0.5), real_row(2, 1100, 90, 11, 0.6), real_row(3, 900, 110, 9, 0.4),
               {**real_row(1, 5, 5, 5, None), "server": "vllm-serve-1api"}]
    server, runs = calibrate_simulator.real_runs(results, None)
    assert server == "ours-2fe" and list(runs) == ["128x1024@64"] and len(runs["128x1024@64"]) == 3
    simulated = {"load": "128x1024@64", "time_scale": 2.0, "runs": [
        {"output_throughput": 1200, "median_ttft_ms": 100, "median_tpot_ms": 10, "prefix_cache_hit_rate": 0.58,
         "time_kept": 0.99}] * 3}
    row = calibrate_simulator.compare(runs["128x1024@64"], simulated)
    assert row["output_throughput"]["ratio"] == pytest.approx(1.2) and not row["output_throughput"]["within"]
    assert row["median_ttft_ms"]["ratio"] == 1.0 and row["median_ttft_ms"]["within"]
    assert row["prefix_cache_hit_rate"]["points"] == pytest.approx(8.0) and not row["prefix_cache_hit_rate"]["within"]
    assert row["frontend_ttft_ms"]["ratio"] is None  # neither side timed at the frontends: no cell
    table = calibrate_simulator.table([row], server, SimpleNamespace(profile="p.json", results=["r.json"]))
    assert "| 128x1024@64 | 3 | 1,000 / 1,200 = 1.20 **out** | 100.0 / 100.0 = 1.00 | - |" in table


def test_the_calibration_sets_the_ttfts_spread_and_the_preemptions_beside_the_real_ones():
    real = [{**real_row(repeat, 1000, 100, 10, 0.5), "result": {**real_row(repeat, 1000, 100, 10, 0.5)["result"],
                                                                "p10_ttft_ms": p10, "p90_ttft_ms": 400.0,
                                                                "preemptions": preemptions}}
            for repeat, p10, preemptions in ((1, 20.0, 10), (2, 30.0, 12), (3, 40.0, 14))]
    simulated = {"load": "128x1024@64", "time_scale": 2.0, "runs": [
        {"output_throughput": 1000, "median_ttft_ms": 100, "median_tpot_ms": 10, "prefix_cache_hit_rate": 0.5,
         "time_kept": 0.99, "p10_ttft_ms": 15.0, "p90_ttft_ms": 400.0, "preemptions": 6}] * 3}
    row = calibrate_simulator.compare(real, simulated)
    assert row["p10_ttft_ms"]["ratio"] == 0.5 and row["preemptions"]["ratio"] == 0.5
    assert row["p25_ttft_ms"]["real"] is None  # results from before the percentiles were kept: no cell
    table = calibrate_simulator.table([row], "ours-2fe", SimpleNamespace(profile="p.json", results=["r.json"]))
    assert "| 128x1024@64 | 30.0 / 15.0 = 0.50 | - | - | 400.0 / 400.0 = 1.00 | 12 / 6 = 0.50 |" in table


def test_the_calibration_takes_the_runs_of_several_gpu_plans_as_one_set(tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps([real_row(1, 1000, 100, 10, 0.5), real_row(2, 1000, 300, 10, 0.5)]))
    second.write_text(json.dumps([{**real_row(1, 1000, 200, 10, 0.5), "load": {**real_row(1, 0, 0, 0, None)["load"],
                                                                                "repeats": 1}}]))
    server, runs = calibrate_simulator.real_runs(calibrate_simulator.read_results([str(first), str(second)]), None)
    assert list(runs) == ["128x1024@64"] and len(runs["128x1024@64"]) == 3
    assert calibrate_simulator.median_of(runs["128x1024@64"], "median_ttft_ms") == 200


def test_kept_simulated_runs_are_compared_with_a_later_gpu_run_without_simulating_again(tmp_path, capsys):
    def simulated_run(tok_s: float, hits: float) -> dict:
        return {"output_throughput": tok_s, "median_ttft_ms": 100, "median_tpot_ms": 10,
                "prefix_cache_hit_rate": hits, "time_kept": 0.99}

    earlier, later = tmp_path / "earlier.json", tmp_path / "later.json"
    earlier.write_text(json.dumps({"rows": [{"load": "128x1024@64", "time_scale": 8.0,
                                             "simulated_runs": [simulated_run(1100, 0.5), simulated_run(1300, 0.5)]},
                                            {"load": "64x64@1", "time_scale": 8.0,
                                             "simulated_runs": [simulated_run(50, 0.0)]}]}))
    later.write_text(json.dumps({"rows": [{"load": "128x1024@64", "time_scale": 8.0,
                                           "simulated_runs": [simulated_run(1200, 0.6)]}]}))
    results = tmp_path / "results.json"  # the GPU run has one of the two loads
    results.write_text(json.dumps([real_row(1, 1000, 100, 10, 0.5), real_row(2, 1000, 100, 10, 0.5)]))
    out = tmp_path / "out"
    calibrate_simulator.main(["--profile", "p.json", "--results", str(results), "--simulated", str(earlier),
                              str(later), "--out", str(out)])
    row, = json.loads((out / "calibration.json").read_text())["rows"]
    assert row["load"] == "128x1024@64" and row["runs"] == 3  # both files' runs of the load, together
    assert row["output_throughput"]["ratio"] == pytest.approx(1.2) and not row["output_throughput"]["within"]
    assert row["prefix_cache_hit_rate"]["points"] == pytest.approx(0.0)
    assert "| 128x1024@64 | 3 | 1,000 / 1,200 = 1.20 **out** |" in capsys.readouterr().out


def test_the_calibration_compares_the_frontends_mean_ttft_where_both_sides_timed_it():
    real = [{**real_row(repeat, 1000, 100, 10, 0.5), "vllm_timings": {"frontend_ttft": {"count": 128, "mean_ms": ms}}}
            for repeat, ms in ((1, 80.0), (2, 90.0), (3, 120.0))]
    simulated = {"load": "128x1024@64", "time_scale": 2.0, "runs": [
        {"output_throughput": 1000, "median_ttft_ms": 70, "median_tpot_ms": 10, "prefix_cache_hit_rate": 0.5,
         "time_kept": 0.99, "frontend_ttft_ms": ms} for ms in (70.0, 85.0, 200.0)]}
    row = calibrate_simulator.compare(real, simulated)
    assert row["frontend_ttft_ms"] == {"real": 90.0, "simulated": 85.0, "ratio": pytest.approx(85 / 90),
                                       "within": True}
    assert not row["median_ttft_ms"]["within"]
    assert calibrate_simulator.time_scale_for(9000, 1500) == 6.0 and calibrate_simulator.time_scale_for(100, 1500) == 1
    assert calibrate_simulator.time_scale_for(100, 1500, least=4.0) == 4.0


METRICS_PAGE = """\
# TYPE llm_engine_prefix_cache_hits counter
llm_engine_prefix_cache_hits_total{engine="0"} 30.0
llm_engine_prefix_cache_hits_total{engine="1"} 12.0
# TYPE llm_engine_routed_requests counter
llm_engine_routed_requests_total{engine="1",reason="prefix"} 4.0
# TYPE llm_time_to_first_token_seconds histogram
llm_time_to_first_token_seconds_bucket{engine="0",le="+Inf"} 2.0
llm_time_to_first_token_seconds_count{engine="0"} 2.0
llm_time_to_first_token_seconds_sum{engine="0"} 0.5
llm_time_to_first_token_seconds_bucket{engine="1",le="+Inf"} 3.0
llm_time_to_first_token_seconds_count{engine="1"} 3.0
llm_time_to_first_token_seconds_sum{engine="1"} 1.0
"""


def test_one_metrics_page_gives_the_engines_series_and_the_frontends_ttft():
    series = sim_fleet.engine_series(METRICS_PAGE)
    assert series["hits"] == {0: 30.0, 1: 12.0} and series["routed"] == {(1, "prefix"): 4.0}
    histograms = vllm_timings.histograms(METRICS_PAGE)
    assert histograms == {"llm_time_to_first_token_seconds": {"sum": 1.5, "count": 5.0}}
    assert vllm_timings.summarize(histograms)["frontend_ttft"] == {"count": 5, "mean_ms": 300.0}
    assert calibrate_simulator.median_or_none([None, 3.0, 1.0, None, 2.0]) == 2.0
    assert calibrate_simulator.median_or_none([None]) is None


def served_row(concurrency: int, ttft: float, tpot: float) -> dict:
    load = {"input_len": 100, "output_len": 200, "concurrency": concurrency, "prompts": concurrency, "repeats": 1}
    return {"server": "ours-4fe", "load": load, "repeat": 1, "result": {"median_ttft_ms": ttft, "median_tpot_ms": tpot}}


# A profile whose prefill of 100 tokens takes 2 + 1 = 3 ms and a decode step 2 ms + 0.1 ms a sequence.
SERVED_STEP_TIME = StepTime(constant_s=0.002, per_prefill_token_s=1e-5, per_decode_seq_s=1e-4, per_kv_token_s=0.0,
                            per_prefill_attention_s=0.0)
# A lone request: 10 ms to its first token, decode as the profile's 2.1 ms. At 33 requests the steps take
# 6.6 ms where the GPU's take 5.3: 0.2 ms of CPU a sequence; at 9 they take the GPU's 2.9 ms (9 x 0.2 =
# 1.8 ms of CPU).
SERVED_ROWS = [served_row(1, 10.0, 2.1), served_row(9, 50.0, 2.9), served_row(33, 150.0, 6.6)]


def test_the_served_terms_are_fitted_to_what_served_runs_took_beyond_the_profile():
    _, runs = calibrate_simulator.real_runs(SERVED_ROWS, None)
    served = calibrate_simulator.fit_served(runs, SERVED_STEP_TIME)
    assert served.first_token_s == pytest.approx(0.010 - 0.003)
    assert served.cpu_per_decode_seq_s == pytest.approx(0.0002)
    _, bursts_only = calibrate_simulator.real_runs(SERVED_ROWS[1:], None)
    with pytest.raises(ValueError, match="no load at concurrency 1"):
        calibrate_simulator.fit_served(bursts_only, SERVED_STEP_TIME)


def test_fit_served_writes_the_terms_and_their_source_into_the_profile(tmp_path):
    results, profile = tmp_path / "results.json", tmp_path / "profile.json"
    results.write_text(json.dumps(SERVED_ROWS))
    profile.write_text(json.dumps({"format": 1, "step_time": msgspec.to_builtins(SERVED_STEP_TIME)}))
    argv = ["--fit-served", "--results", str(results), "--profile", str(profile)]
    calibrate_simulator.main(argv)
    served = load_profile(profile).served
    assert served.fitted["command"] == "python -m bench.calibrate_simulator " + " ".join(argv)
    assert served.first_token_s == pytest.approx(0.007) and served.cpu_per_decode_seq_s == pytest.approx(0.0002)
    assert served.fitted["results"] == str(results) and served.fitted["server"] == "ours-4fe"
    assert served.fitted["loads"] == ["100x200@1", "100x200@33", "100x200@9"]


def sharing_calibration(cuda_visible_devices: str, tpots: list[tuple[float, float]]) -> dict:
    """A calibration.json of simulated engines on `cuda_visible_devices`: (real, simulated) TPOT p50 a row."""
    return {"args": {"cuda_visible_devices": cuda_visible_devices, "out": "/tmp/sim"},
            "rows": [{"median_tpot_ms": {"real": real, "simulated": simulated}} for real, simulated in tpots]}


def test_the_gpu_switch_is_the_tpot_the_turns_missed_over_the_engines_sharing_the_gpu(tmp_path):
    # Four engines on GPU 0: 4 ms and 3.2 ms missed a token, 1 ms and 0.8 ms a switch; two on GPU 0 (and
    # one alone on GPU 1): 1.8 ms, 0.9 ms a switch. The mean: 0.9 ms.
    four = sharing_calibration("0,0,0,0", [(40.0, 36.0), (41.2, 38.0)])
    two = sharing_calibration("0,0,1", [(20.0, 18.2)])
    assert calibrate_simulator.fit_gpu_switch([four, two]) == pytest.approx(0.0009)
    with pytest.raises(ValueError, match="did not share a GPU"):
        calibrate_simulator.fit_gpu_switch([sharing_calibration("0,1", [(20.0, 18.0)])])

    calibration, profile = tmp_path / "calibration.json", tmp_path / "profile.json"
    calibration.write_text(json.dumps(four))
    profile.write_text(json.dumps({"format": 1, "step_time": msgspec.to_builtins(SERVED_STEP_TIME)}))
    calibrate_simulator.main(["--profile", str(profile), "--fit-gpu-switch", str(calibration)])
    served = load_profile(profile).served
    assert served.gpu_switch_s == pytest.approx(0.0009)
    assert served.gpu_switch_fitted["calibrations"] == [str(calibration)]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(SERVED_ROWS))
    calibrate_simulator.main(["--fit-served", "--results", str(results), "--profile", str(profile)])
    served = load_profile(profile).served  # fitting the other terms again keeps the switch
    assert served.gpu_switch_s == pytest.approx(0.0009) and served.first_token_s == pytest.approx(0.007)
    assert served.gpu_switch_fitted["calibrations"] == [str(calibration)]


def test_a_ladder_started_at_a_later_repeat_keeps_the_earlier_repeats_and_refuses_one_past_the_last(tmp_path, capsys):
    runs = [{"engines": 8, "policy": "prefix", "repeat": repeat, "stages": []} for repeat in (1, 2, 3)]
    (tmp_path / "ladder.json").write_text(json.dumps({"args": {}, "runs": runs}))
    assert [run["repeat"] for run in llmd_ladder.earlier_repeats(tmp_path, 3)] == [1, 2]
    assert llmd_ladder.earlier_repeats(tmp_path, 1) == []  # a whole ladder starts afresh
    assert llmd_ladder.parse_args(["--first-repeat", "3"]).first_repeat == 3
    with pytest.raises(SystemExit):
        llmd_ladder.parse_args(["--first-repeat", "4", "--repeats", "3"])
    assert "--first-repeat must be 1 to --repeats (3), not 4" in capsys.readouterr().err
