"""llm-d's prefix-routing benchmark on simulated fleets: groups of 6,000-token system prompts with 1,200-token
questions and 1,000 output tokens (inference-perf's shared_prefix data: 150 groups x 5 questions), sent as
a Poisson ladder of request rates up to past saturation, for each router policy and fleet size.

    .venv/bin/python -m bench.llmd_ladder --engines 8 16 --policies prefix approximate load round_robin vllm_dp \\
        oracle --profile bench/profiles/h200-llama-3-8b.json --repeats 3 --out bench/results/llmd-ladder

Each run starts the fleet afresh (empty caches), sends a warm-up stage and then the ladder's stages back
to back, as llm-d's runs do, and cuts what still runs --drain-s after the last stage. Each stage is measured
by itself: output tokens the engines generated during it, TTFT of the requests that arrived in it (a
request cut off before its first token counts with the time it had waited: its TTFT is at least that, and
the stage's percentile then reads as a lower bound, marked >=), prefix-cache hits during it, the time
the simulation kept, and the requests the engines ran and held waiting at its end (the queue a later
arrival waits behind). Rates are per simulated second, and per engine on the command line (--rates), so
one ladder fits every fleet size. `oracle` is bench/oracle.py, an instrument: the mark for hit rates.
Writes OUT/ladder.json (every run's stages), OUT/ladder.md (the medians over repeats and the targets) and
OUT/ladder.png (bench/plot.py). `--first-repeat N` runs repeats N to --repeats only (each repeat draws its
own arrivals, so repeat 3 is the same whenever it runs), keeping the earlier repeats of OUT/ladder.json in
the medians: give the same OUT and arguments as the run it completes.
"""
import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.fleet_client import CUT
from bench.fleet_workloads import PromptMaker, SharedPrefixPrompts, poisson_times
from bench.services import router_label
from bench.sim_fleet import (
    FIXTURE_PROFILE, ORACLE, FleetRun, FleetSpec, difference, engine_figures, stop_on_sigterm, vocabulary,
)

GROUPS, USERS, SYSTEM_LEN, QUESTION_LEN, OUTPUT_LEN = 150, 5, 6000, 1200, 1000
ENGINE_ARGS = {"max_model_len": SYSTEM_LEN + QUESTION_LEN + OUTPUT_LEN + 248}  # 8,448: room for the shape


@dataclass
class Stage:
    rate: float  # requests per simulated second, the whole fleet
    duration_s: float
    warm_up: bool = False


def stages_for(engines: int, warm_up: tuple[float, float], rates: list[float], stage_s: float) -> list[Stage]:
    """The warm-up (rate per engine, seconds) and the ladder, rates per engine times the fleet's engines."""
    return [Stage(warm_up[0] * engines, warm_up[1], True)] + [Stage(rate * engines, stage_s) for rate in rates]


def arrivals(stages: list[Stage], seed: int) -> tuple[list[float], list[float]]:
    """Every request's arrival and the stages' start times (with the end of the last), simulated seconds."""
    rng, times, bounds = random.Random(seed), [], [0.0]
    for stage in stages:
        times += poisson_times(stage.rate, stage.duration_s, rng, bounds[-1])
        bounds.append(bounds[-1] + stage.duration_s)
    return times, bounds


def stage_figures(summary: dict, stages: list[Stage], bounds: list[float], spec: FleetSpec) -> list[dict]:
    """Each stage of one run, measured by itself."""
    ts, started, engines = spec.time_scale, summary["started"], spec.engines
    reads = [summary["before"], *summary["scrapes"]]
    rows = []
    for index, stage in enumerate(stages):
        begin, end = bounds[index], bounds[index + 1]
        arrived = [o for o in summary["outcomes"] if begin <= (o.planned_at - started) / ts < end]
        waits = [((o.first_token_at or cut_time(o, summary)) - o.start) / ts for o in arrived]
        censored = sum(o.first_token_at is None for o in arrived)
        tpots = [(o.end - o.first_token_at) / ts / (o.output_tokens - 1) for o in arrived
                 if o.ok and o.output_tokens > 1]
        ends = reads[index:index + 2]
        delta = difference(*ends) if len(ends) == 2 and None not in ends else {}  # {}: a read was missed
        figures = engine_figures(delta, engines)
        at_end = ends[1] if len(ends) == 2 and ends[1] is not None else {}
        generated = sum(delta.get("generation_tokens", {}).values())
        rows.append({
            "rate": stage.rate, "rate_per_engine": stage.rate / engines, "warm_up": stage.warm_up,
            "duration_s": stage.duration_s, "requests": len(arrived),
            "completed": sum(o.ok for o in arrived), "failed": sum(bool(o.error) and o.error != CUT for o in arrived),
            "output_throughput": generated / stage.duration_s if delta else None,
            "ttft_p50_s": quantile(waits, 50), "ttft_p90_s": quantile(waits, 90), "ttft_p99_s": quantile(waits, 99),
            "ttft_censored": censored, "tpot_p50_s": quantile(tpots, 50),
            "prefix_cache_hit_rate": figures["prefix_cache_hit_rate"], "time_kept": figures["time_kept"],
            "running_at_end": sum(at_end["running"].values()) if "running" in at_end else None,
            "waiting_at_end": sum(at_end["waiting"].values()) if "waiting" in at_end else None,
            "work_spread": max(figures["work_by_engine"]) / statistics.fmean(figures["work_by_engine"])
            if delta and sum(figures["work_by_engine"]) else None,
        })
    return rows


def cut_time(outcome, summary: dict) -> float:
    """When a request without a first token stopped waiting: its end, or the run's end."""
    return outcome.end or max(o.end or o.start for o in summary["outcomes"])


def quantile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_once(spec: FleetSpec, stages: list[Stage], prompts: SharedPrefixPrompts, seed: int, out: Path,
             port: int, drain_s: float) -> dict:
    times, bounds = arrivals(stages, seed)
    prompts.rng.seed(seed)  # every policy of one repeat draws the same prompts at the same times
    sessions = prompts.requests(times, OUTPUT_LEN)
    with FleetRun(spec, out, port) as run:
        summary = run.send(sessions, cut_at_s=bounds[-1] + drain_s, scrape_at_s=tuple(bounds[1:]))
    rows = stage_figures(summary, stages, bounds, spec)
    return {"policy": spec.policy, "engines": spec.engines, "time_scale": spec.time_scale,
            "host_kept_up": summary["host_kept_up"], "host_verdict": summary["host_verdict"],
            "cpu_us_per_output_token": summary["cpu_us_per_output_token"], "stages": rows}


def medians(runs: list[dict]) -> list[dict]:
    """One row per (engines, policy, stage): the median over the repeats, lowest and highest beside it."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for index, row in enumerate(run.get("stages", [])):
            if not row["warm_up"]:
                groups.setdefault((run["engines"], run["policy"], index), []).append(row)
    table = []
    for (engines, policy, _), rows in groups.items():
        row = {"engines": engines, "policy": policy, "rate": rows[0]["rate"], "runs": len(rows),
               "censored": any(r["ttft_censored"] for r in rows)}
        for key in ("output_throughput", "ttft_p90_s", "ttft_p50_s", "tpot_p50_s", "prefix_cache_hit_rate",
                    "time_kept", "running_at_end", "waiting_at_end"):
            values = sorted(r[key] for r in rows if r.get(key) is not None)  # runs before a figure lack it
            row[key] = statistics.median(values) if values else None
            row[key + "_range"] = (values[0], values[-1]) if values else None
        table.append(row)
    return sorted(table, key=lambda r: (r["engines"], r["policy"], r["rate"]))


def targets(table: list[dict], engines: int) -> list[str]:
    """issue 22's targets for one fleet size, each met or not, from the medians."""
    rows = [row for row in table if row["engines"] == engines]
    by_policy = {policy: [r for r in rows if r["policy"] == policy] for policy in {r["policy"] for r in rows}}

    def peak(policy):
        values = [r["output_throughput"] for r in by_policy.get(policy, []) if r["output_throughput"]]
        return max(values) if values else None

    def hits(policy):
        values = [r["prefix_cache_hit_rate"] for r in by_policy.get(policy, []) if r["prefix_cache_hit_rate"]]
        return statistics.fmean(values) if values else None

    lines, ours = [], peak("prefix")
    for other, factor in (("round_robin", 2.0), ("vllm_dp", 1.3)):
        if ours and peak(other):
            ratio = ours / peak(other)
            lines.append(f"peak output throughput {ratio:.2f}x {other}'s (target {factor}x): "
                         f"{'met' if ratio >= factor else 'NOT met'}")
        else:
            lines.append(f"peak output throughput against {other}: not measured")
    top = max((r["rate"] for r in rows), default=None)
    at_top = {r["policy"]: r for r in rows if r["rate"] == top}
    if "prefix" in at_top and "round_robin" in at_top:
        mine, theirs = at_top["prefix"]["ttft_p90_s"], at_top["round_robin"]["ttft_p90_s"]
        lines.append(f"TTFT p90 at the top rate ({top:g}/s): {mine:.2f} s against round_robin's "
                     f"{'>=' if at_top['round_robin']['censored'] else ''}{theirs:.1f} s (target under 1 s where "
                     f"round robin's is above 100 s): {'met' if mine < 1 and theirs > 100 else 'NOT met'}")
    if hits("prefix") is not None and hits(ORACLE) is not None:
        gap = 100 * (hits(ORACLE) - hits("prefix"))
        lines.append(f"prefix-cache hit rate {100 * hits('prefix'):.1f}% against the oracle's "
                     f"{100 * hits(ORACLE):.1f}% (target within 5 points): {'met' if gap <= 5 else 'NOT met'}")
    return [f"{engines} engines: {line}" for line in lines]


def report(table: list[dict], runs: list[dict], args) -> str:
    def cell(row, key, scale=1.0, spec=".2f"):
        value, span = row[key], row[key + "_range"]
        return "-" if value is None else f"{scale * value:{spec}} ({scale * span[0]:{spec}}–{scale * span[1]:{spec}})"

    lines = [f"llm-d-shaped ladder, profile {args.profile}; medians of the repeats (lowest–highest); every time "
             "in simulated seconds", "",
             "| engines | policy | rate (req/s) | runs | output tok/s | TTFT p90 s | TTFT p50 s | TPOT p50 ms | "
             "prefix-cache hits % | time kept % | running / waiting at its end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['engines']} | {row['policy']} | {row['rate']:g} | {row['runs']} | "
                     f"{cell(row, 'output_throughput', spec=',.0f')} | {'>=' if row['censored'] else ''}"
                     f"{cell(row, 'ttft_p90_s')} | {cell(row, 'ttft_p50_s')} | "
                     f"{cell(row, 'tpot_p50_s', 1000, '.1f')} | "
                     f"{cell(row, 'prefix_cache_hit_rate', 100, '.1f')} | {cell(row, 'time_kept', 100, '.1f')} | "
                     f"{cell(row, 'running_at_end', spec='.0f')} / {cell(row, 'waiting_at_end', spec='.0f')} |")
    lines += ["", *(f"- {line}" for engines in args.engines for line in targets(table, engines))]
    failed = [run for run in runs if "error" in run]
    slow = [run for run in runs if not run.get("host_kept_up", True)]
    lines += [f"- {run['engines']} engines, {run['policy']}: did not run: {run['error']}" for run in failed]
    lines += [f"- {run['engines']} engines, {run['policy']}: {run['host_verdict']}" for run in slow]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--policies", nargs="+",
                        default=["prefix", "approximate", "load", "round_robin", "vllm_dp", ORACLE])
    parser.add_argument("--profile", default=FIXTURE_PROFILE)
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 3, 4, 6],
                        help="the ladder's request rates per engine and simulated second")
    parser.add_argument("--stage-s", type=float, default=20.0, help="simulated seconds of each stage")
    parser.add_argument("--warm-up", type=float, nargs=2, default=[1.0, 20.0], metavar=("RATE", "SECONDS"),
                        help="the warm-up stage: rate per engine, simulated seconds")
    parser.add_argument("--drain-s", type=float, default=30.0,
                        help="simulated seconds past the last stage before what still runs is cut off")
    parser.add_argument("--time-scale", type=float, nargs="+", default=[1.5],
                        help="time_scale per engine: one value for every fleet (x engines), or one per --engines")
    parser.add_argument("--frontends", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-repeat", type=int, default=1,
                        help="start at this repeat, keeping OUT/ladder.json's earlier ones (a run cut short)")
    parser.add_argument("--port", type=int, default=7380)
    parser.add_argument("--out", default="bench/results/llmd-ladder")
    args = parser.parse_args(argv)
    if not 1 <= args.first_repeat <= args.repeats:
        parser.error(f"--first-repeat must be 1 to --repeats ({args.repeats}), not {args.first_repeat}")
    return args


def earlier_repeats(out: Path, first_repeat: int) -> list[dict]:
    """The runs of repeats before `first_repeat` that OUT/ladder.json holds from an earlier invocation."""
    path = out / "ladder.json"
    if first_repeat == 1 or not path.exists():
        return []
    return [run for run in json.loads(path.read_text())["runs"] if run["repeat"] < first_repeat]


def time_scale(args, index: int) -> float:
    """time_scale of the index-th fleet: given per engine, since the host's work grows with the engines."""
    per_engine = args.time_scale[index] if len(args.time_scale) > 1 else args.time_scale[0]
    return per_engine * args.engines[index]


def main(argv=None) -> None:
    args = parse_args(argv)
    stop_on_sigterm()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = FleetSpec()
    prompts = SharedPrefixPrompts(PromptMaker(vocabulary(spec.model), seed=22), GROUPS, USERS, SYSTEM_LEN,
                                  QUESTION_LEN, draw_seed=22)
    runs = earlier_repeats(out, args.first_repeat)
    for index, engines in enumerate(args.engines):
        stages = stages_for(engines, tuple(args.warm_up), args.rates, args.stage_s)
        for repeat in range(args.first_repeat, args.repeats + 1):
            for policy in args.policies:
                spec = FleetSpec(engines=engines, frontends=args.frontends, policy=policy, profile=args.profile,
                                 time_scale=time_scale(args, index), engine_args=ENGINE_ARGS)
                started = time.monotonic()
                try:
                    run = run_once(spec, stages, prompts, repeat, out / f"{engines}-{router_label(policy)}-r{repeat}",
                                   args.port, args.drain_s)
                except RuntimeError as error:  # a policy this build has not got refuses to start
                    run = {"policy": policy, "engines": engines, "error": str(error)}
                run.update(repeat=repeat, wall_s=round(time.monotonic() - started))
                runs.append(run)
                print(json.dumps({key: run.get(key) for key in ("engines", "policy", "repeat", "wall_s",
                                                                "host_verdict", "error")}), flush=True)
                (out / "ladder.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    table = medians(runs)
    (out / "ladder.md").write_text(report(table, runs, args))
    print(report(table, runs, args))
    try:
        from bench import plot
    except ImportError as error:
        print(f"no plot: {error} (pip install matplotlib)")
        return
    if table:
        plot.plot_ladder(table, str(out / "ladder.png"))


if __name__ == "__main__":
    main()
