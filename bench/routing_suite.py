"""The routing regression suite: the routing bugs the peers' users file most, each a scenario on a fleet
of simulated engines with a pass line (docs/fleet.md, "The routing regression suite").

    .venv/bin/python -m bench.routing_suite --policy prefix --profile tests/fixtures/step-time-profile-fixture.json \\
        --out bench/results/routing-suite

(a) a burst of one identical prefix; (b) 32,000-token prompts with one output token among chat traffic;
(c) multi-turn sessions at low load; (d) 1, 2, 4 and 8 frontends; (e) random prompts at saturation;
(f) one engine stalled (SIGSTOP), not dead; (g) 64 engines and 1,000 prefix groups. --scale small runs
each at the size the tests run it (tests/test_routing_suite_e2e.py). A scenario that misses its pass line
is reported as failing, with what was measured; the command exits 1 if any did. Writes OUT/suite.json
and OUT/suite.md.
"""
import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.fleet_client import Session, Turn
from bench.fleet_workloads import PromptMaker, SharedPrefixPrompts, poisson_times, random_requests, single
from bench.sim_fleet import (
    FIXTURE_PROFILE, FleetRun, FleetSpec, figures_of, scrape, stop_on_sigterm, vocabulary,
)
from common.config import ROOT
from common.step_time import StepWork, load_profile

BLOCK = 16  # the engines' and the routers' block size


@dataclass(frozen=True)
class Size:
    """How large each scenario runs; time scales chosen so this 2-core host keeps the simulated time."""
    engines: int  # the fleet of (a) to (f)
    frontends: int
    time_scale: float
    burst: int  # (a) requests
    chat_rate: float  # (b) chat requests per simulated second, over `mixed_s`
    long_rate: float  # (b) 32,000-token prompts per simulated second
    mixed_s: float
    sessions: int  # (c)
    turns: int
    frontend_counts: tuple[int, ...]  # (d)
    frontends_s: float
    frontends_repeats: int  # (d): the verdict is on each count's median over them
    saturation_s: float  # (e)
    stall_wall_s: float  # (f) wall seconds of traffic after the stall's first 2 s
    scale_engines: int  # (g)
    scale_frontends: int
    groups: int
    scale_time_scale: float
    scale_s: float
    seed: int = 0  # a repeat's draws: 0 gives the arrivals and prompts of every run before `--seed`


def seeded(size: Size, base: int) -> int:
    """A scenario's draw seed for the size's repeat: another repeat draws other arrivals and prompts."""
    return base + 1000 * size.seed


FULL = Size(engines=8, frontends=8, time_scale=6.0, burst=256, chat_rate=12.0, long_rate=0.4, mixed_s=40.0,
            sessions=32, turns=6, frontend_counts=(1, 2, 4, 8), frontends_s=30.0, frontends_repeats=3,
            saturation_s=20.0, stall_wall_s=8.0, scale_engines=64, scale_frontends=4, groups=1000,
            scale_time_scale=8.0, scale_s=20.0)
SMALL = Size(engines=8, frontends=2, time_scale=4.0, burst=64, chat_rate=6.0, long_rate=0.4, mixed_s=10.0,
             sessions=8, turns=3, frontend_counts=(1, 2), frontends_s=4.0, frontends_repeats=1, saturation_s=4.0,
             stall_wall_s=4.0, scale_engines=16, scale_frontends=2, groups=100, scale_time_scale=4.0, scale_s=6.0)
# Engines of the fleet: a context for (b)'s 32,000-token prompts; the rest from the profile.
ENGINE_ARGS = {"max_model_len": 33024}


@dataclass
class Verdict:
    scenario: str
    title: str
    pass_line: str
    passed: bool
    measured: str
    runs: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    def line(self) -> str:
        host = kept_up(*self.runs)
        return (f"({self.scenario}) {self.title}: {'PASS' if self.passed else 'FAIL'}: {self.measured}"
                f"{'; ' + host if host else ''} [{self.wall_s:.0f} s]")


def kept_up(*summaries: dict) -> str:
    """'' when the host kept the simulated time in every run, else why the figures measure the host."""
    return "; ".join(summary["host_verdict"] for summary in summaries if not summary["host_kept_up"])


def burst(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(a) Many requests with one identical prefix arriving together: the routers must not pile them all
    onto the engine that looks least loaded or holds the prefix (identical scores, heartbeats too slow)."""
    prefix, rng = maker.ids(2048), random.Random(seeded(size, 1))
    sessions = [single(prefix + maker.ids(64), 64, at) for at in sorted(rng.uniform(0, 0.010)
                                                                        for _ in range(size.burst))]
    summary = run.send(sessions)
    counts = summary["requests_by_engine"]
    busiest = summary["request_spread"] or float("inf")
    passed = summary["completed"] == size.burst and busiest <= 1.5
    return Verdict("a", f"{size.burst} requests with one 2,048-token prefix within 10 ms",
                   "every request completes; no engine takes more than 1.5x the mean share", passed,
                   f"busiest engine {busiest:.2f}x the mean (requests by engine {[int(c) for c in counts]}), "
                   f"hits {100 * (summary['prefix_cache_hit_rate'] or 0):.1f}%, TTFT p90 "
                   f"{summary['ttft_s']['p90']:.2f} s", [figures_of(summary)])


def long_prompts(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(b) Prefill-only load: 32,000-token prompts with one output token. A score that counts requests sees
    one cheap request; the engine spends seconds prefilling it, and chat sent there waits."""
    rng = random.Random(seeded(size, 2))
    chat_times = poisson_times(size.chat_rate, size.mixed_s, rng)
    long_times = poisson_times(size.long_rate, size.mixed_s, rng)
    alone = run.send(random_requests(maker, chat_times, 1024, 128, "chat"))
    mixed = run.send(random_requests(maker, chat_times, 1024, 128, "chat")
                     + random_requests(maker, long_times, 32000, 1, "long"))
    alone_p90, mixed_p90 = (summary["ttft_s_by_tag"]["chat"]["p90"] for summary in (alone, mixed))
    passed = mixed["failed"] == 0 and mixed_p90 <= 2 * alone_p90
    return Verdict("b", f"{len(long_times)} prompts of 32,000 tokens with 1 output token among {len(chat_times)} "
                        "chat requests (1,024 in, 128 out)",
                   "chat's TTFT p90 at most 2x its TTFT p90 without the long prompts", passed,
                   f"chat TTFT p90 {mixed_p90:.3f} s with the long prompts, {alone_p90:.3f} s without "
                   f"({mixed_p90 / alone_p90:.1f}x); work spread {mixed['work_spread']:.2f}x the mean",
                   [figures_of(alone), figures_of(mixed)])


def multi_turn(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(c) Conversations at low load: each turn's prompt is the last one, an answer and a new message; the
    turn must go where the last one is cached, through whichever frontend nginx gives it."""
    rng = random.Random(seeded(size, 3))
    sessions, ideal_hits, queries = [], 0, 0
    starts = [rng.uniform(0, size.sessions / 4.0) for _ in range(size.sessions)]  # four a simulated second
    for start in sorted(starts):
        prompt, turns = maker.ids(1024), []
        for number in range(size.turns):
            turns.append(Turn(prompt, 64, start if number == 0 else 0.5, "turn"))  # half a second to reply
            queries += len(prompt)
            ideal_hits += len(turns[-2].prompt) // BLOCK * BLOCK if number else 0
            prompt = prompt + maker.ids(64) + maker.ids(64)  # the answer as the client kept it, a new message
        sessions.append(Session(turns))
    summary = run.send(sessions)
    ideal, hits = ideal_hits / queries, summary["prefix_cache_hit_rate"] or 0.0
    passed = summary["failed"] == 0 and hits >= 0.95 * ideal
    return Verdict("c", f"{size.sessions} conversations of {size.turns} turns at low load",
                   "prefix-cache hit rate at least 95% of the one every turn on its conversation's engine gives",
                   passed, f"hits {100 * hits:.1f}% of prompt tokens, {100 * hits / ideal:.0f}% of the "
                   f"{100 * ideal:.1f}% that keeping each conversation on its engine gives", [figures_of(summary)])


def frontend_counts(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(d) The same load through 1, 2, 4, 8 frontends (the client sends to each in turn, past nginx): routers
    that each see only their own sends settle prefixes apart and lose cache hits. Each count sends the same
    prompts at the same times to a fleet whose prefix caches were emptied before it (and every router's view
    of them), so each count places the same prefix groups afresh. A TTFT p90 of a few simulated
    milliseconds moves by about 5% with the host's noise alone, so each count runs `frontends_repeats`
    times, the counts taking turns, and the verdict is on each count's medians."""
    by_count = {count: [] for count in size.frontend_counts}
    times = poisson_times(2.0 * size.engines, size.frontends_s, random.Random(seeded(size, 4)))
    for _ in range(size.frontends_repeats):
        for count in size.frontend_counts:
            # Made afresh each time: requests() draws the prompts from the generator it holds.
            prompts = SharedPrefixPrompts(PromptMaker(maker.vocabulary, seed=seeded(size, 100)), 2 * size.engines,
                                          4, 2048, 256, draw_seed=seeded(size, 4))
            run.empty_prefix_caches()
            by_count[count].append(run.send(prompts.requests(times, 64), urls=run.frontend_urls(count)))
    summaries = [summary for count in size.frontend_counts for summary in by_count[count]]
    hits = [statistics.median(summary["prefix_cache_hit_rate"] or 0.0 for summary in by_count[count])
            for count in by_count]
    p90s = {count: [summary["ttft_s"]["p90"] for summary in by_count[count]] for count in by_count}
    p90 = [statistics.median(p90s[count]) for count in by_count]
    passed = all(h >= 0.95 * hits[0] and t <= 1.05 * p90[0] for h, t in zip(hits, p90)) and \
        all(summary["failed"] == 0 for summary in summaries)
    cells = ", ".join(f"{count} frontends: hits {100 * h:.1f}%, TTFT p90 {t:.3f} s"
                      + (f" ({min(p90s[count]):.3f}–{max(p90s[count]):.3f})" if size.frontends_repeats > 1 else "")
                      for count, h, t in zip(size.frontend_counts, hits, p90))
    repeats = f", medians of {size.frontends_repeats} runs each" if size.frontends_repeats > 1 else ""
    return Verdict("d", f"one shared-prefix load through {', '.join(map(str, size.frontend_counts))} frontends",
                   "prefix-cache hit rate and TTFT p90 within 5% of one frontend's", passed, cells + repeats,
                   [figures_of(summary) for summary in summaries])


def saturation(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(e) Random prompts (4,096 in, 16 out) arriving at 1.25x what the fleet can prefill: every engine
    queues; none may queue much more than the others."""
    prefill_s = load_profile(ROOT / run.spec.profile).step_time.seconds(StepWork(4096, 0, 0, 4096 * 4096))
    rate = 1.25 * size.engines / prefill_s
    times = poisson_times(rate, size.saturation_s, random.Random(seeded(size, 5)))
    summary = run.send(random_requests(maker, times, 4096, 16), sample_load=True)
    loads = summary["mean_load_by_engine"]
    spread = summary["load_spread"] or float("inf")
    passed = spread <= 1.2
    return Verdict("e", f"{len(times)} random prompts at 1.25x the fleet's prefill capacity",
                   "no engine's mean load (requests running and waiting) above 1.2x the mean", passed,
                   f"busiest engine {spread:.2f}x the mean (mean requests by engine "
                   f"{[round(load, 1) for load in loads.values()]})", [figures_of(summary)])


def stall(run: FleetRun, size: Size, maker: PromptMaker) -> Verdict:
    """(f) One engine stopped with SIGSTOP: its process is there, its socket accepts, nothing answers. New
    requests must stop going there within 2 s (wall clock: the heartbeats' clock)."""
    stalled = size.engines - 1
    stop_after_s = 3.0  # wall seconds into the run
    duration_s = (stop_after_s + 2.0 + size.stall_wall_s) / run.spec.time_scale
    # Twenty requests a wall second: the stall is on the wall clock, and so is what it must show.
    times = poisson_times(20 * run.spec.time_scale, duration_s, random.Random(seeded(size, 6)))
    marks: dict[str, dict] = {}

    def stop_one():
        time.sleep(stop_after_s)
        os.kill(run.service.pid(f"engine-{stalled}"), signal.SIGSTOP)
        marks["at stop"] = scrape(run.url)["routed"]
        time.sleep(2.0)
        marks["at 2 s"] = scrape(run.url)["routed"]

    stopper = threading.Thread(target=stop_one)
    stopper.start()
    try:
        summary = run.send(random_requests(maker, times, 512, 32))
        stopper.join()
        marks["at the end"] = scrape(run.url)["routed"]
    finally:
        stopper.join()
        os.kill(run.service.pid(f"engine-{stalled}"), signal.SIGCONT)

    def sent(since: str, until: str) -> int:
        return int(sum(count - marks[since].get(key, 0) for key, count in marks[until].items() if key[0] == stalled))

    late = sent("at 2 s", "at the end")
    return Verdict("f", f"engine {stalled} of {size.engines} stopped (SIGSTOP) during steady traffic",
                   "no new request reaches it from 2 s after it stopped", late == 0,
                   f"{sent('at stop', 'at 2 s')} requests sent to it in the 2 s after it stopped, {late} after; "
                   f"{summary['failed']} of {summary['requests']} failed (those it held)", [figures_of(summary)])


def scale(size: Size, profile: str, policy: str, out: Path, port: int) -> Verdict:
    """(g) Many engines and many prefix groups: placement must keep each group where it is cached, and the
    fleet even, with a routing cost each frontend can bear."""
    spec = FleetSpec(engines=size.scale_engines, frontends=size.scale_frontends, policy=policy, profile=profile,
                     time_scale=size.scale_time_scale, engine_args=ENGINE_ARGS)
    maker = PromptMaker(vocabulary(spec.model), seed=seeded(size, 7))
    users, system_len, question_len = 2, 1024, 128
    prompts = SharedPrefixPrompts(maker, size.groups, users, system_len, question_len, draw_seed=seeded(size, 7))
    rate = 4 * size.groups / size.scale_s  # each group's prompts about four times over the run
    sessions = prompts.requests(poisson_times(rate, size.scale_s, random.Random(seeded(size, 7))), 32)
    ideal = ideal_hit_rate([session.turns[0].prompt for session in sessions], users, system_len)
    with FleetRun(spec, out / "scale", port) as run:
        summary = run.send(sessions, sample_load=True)
    hits = summary["prefix_cache_hit_rate"] or 0.0
    waiting = max(summary["mean_waiting_by_engine"].values(), default=0.0)
    passed = summary["failed"] == 0 and hits >= ideal - 0.05 and waiting < 1.0
    return Verdict("g", f"{size.scale_engines} engines, {size.groups} prefix groups ({len(sessions)} requests)",
                   "prefix-cache hit rate within 5 points of each group kept on one engine; no engine keeps requests "
                   "waiting (under 1 on average)", passed,
                   f"hits {100 * hits:.1f}% (ideal {100 * ideal:.1f}%), most waiting on one engine {waiting:.2f}, "
                   f"busiest engine's work {summary['work_spread']:.2f}x the mean, TTFT p99 "
                   f"{summary['ttft_s']['p99']:.3f} s", [figures_of(summary)])


def ideal_hit_rate(prompts: list[list[int]], users: int, system_len: int) -> float:
    """Hits if each group's prompts all went to one engine that never evicted: a repeated prompt finds all
    but its last token (in whole blocks), a new question of a known group finds the system prompt."""
    seen_prompts, seen_groups, hits = set(), set(), 0
    for prompt in prompts:
        group = tuple(prompt[:system_len])
        if id(prompt) in seen_prompts:
            hits += (len(prompt) - 1) // BLOCK * BLOCK
        elif group in seen_groups:
            hits += system_len // BLOCK * BLOCK
        seen_prompts.add(id(prompt))
        seen_groups.add(group)
    return hits / sum(len(prompt) for prompt in prompts)


SCENARIOS = {"a": burst, "b": long_prompts, "c": multi_turn, "d": frontend_counts, "e": saturation, "f": stall}


def run_suite(size: Size, policy: str, profile: str, only: str, out: Path, port: int = 7380) -> list[Verdict]:
    verdicts = []
    shared = [name for name in SCENARIOS if name in only]
    if shared:
        spec = FleetSpec(engines=size.engines, frontends=size.frontends, policy=policy, profile=profile,
                         time_scale=size.time_scale, engine_args=ENGINE_ARGS)
        maker = PromptMaker(vocabulary(spec.model), seed=seeded(size, 0))
        with FleetRun(spec, out / "fleet", port) as run:
            for name in shared:  # (f) last: it stops an engine
                verdicts.append(timed(SCENARIOS[name], run, size, maker))
    if "g" in only:
        verdicts.append(timed(scale, size, profile, policy, out, port))
    return verdicts


def timed(scenario, *args) -> Verdict:
    started = time.monotonic()
    verdict = scenario(*args)
    verdict.wall_s = time.monotonic() - started
    print(verdict.line(), flush=True)
    return verdict


def report(verdicts: list[Verdict], args) -> str:
    scales = f", time_scale {args.time_scale[0]:g} ((g): {args.time_scale[1]:g})" if args.time_scale else ""
    lines = [f"Routing suite, {args.scale} scale, router policy {args.policy}, profile {args.profile}{scales}", "",
             "| scenario | pass line | result | measured | host |", "|---|---|---|---|---|"]
    for verdict in verdicts:
        host = kept_up(*verdict.runs) or "kept time"
        lines.append(f"| ({verdict.scenario}) {verdict.title} | {verdict.pass_line} | "
                     f"{'pass' if verdict.passed else '**FAIL**'} | {verdict.measured} | {host} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--policy", default="prefix", help="server.yml's router, as FleetSpec.policy")
    parser.add_argument("--profile", default=FIXTURE_PROFILE, help="the step-time profile of every engine")
    parser.add_argument("--only", default="abcdefg", help="the scenarios to run, e.g. acg")
    parser.add_argument("--time-scale", type=float, nargs=2, metavar=("FLEET", "SCALE"),
                        help="time_scale of (a) to (f)'s fleet and of (g)'s, over the scale's own (a busy host)")
    parser.add_argument("--seed", type=int, default=0,
                        help="a repeat with other arrivals and prompts (0: those of the runs before the option)")
    parser.add_argument("--out", default="bench/results/routing-suite")
    parser.add_argument("--port", type=int, default=7380, help="nginx's; the frontends take the next ports")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    size = FULL if args.scale == "full" else SMALL
    if args.time_scale:
        size = replace(size, time_scale=args.time_scale[0], scale_time_scale=args.time_scale[1])
    size = replace(size, seed=args.seed)
    verdicts = run_suite(size, args.policy, args.profile, args.only, out, args.port)
    (out / "suite.json").write_text(json.dumps([asdict(verdict) for verdict in verdicts], indent=1, default=str))
    (out / "suite.md").write_text(report(verdicts, args))
    print(report(verdicts, args))
    return 0 if all(verdict.passed for verdict in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
