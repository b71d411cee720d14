"""The simulated engine against the real one: the loads a GPU run measured with bench/side_by_side.py, run
again on one simulated engine with the same engine arguments, model files and `vllm bench serve`, and the
ratios beside the real results (issue 22's targets: throughput, TTFT p50 and TPOT p50 within 15%,
prefix-cache hit rate within 5 points).

    .venv/bin/python -m bench.calibrate_simulator --results bench/results/gpu-h200-lease/calibration/results.json \\
        --model .gpu/model --profile bench/profiles/h200-llama-3-8b.json \\
        --engine-args '{"max_model_len": 4096, "num_gpu_blocks_override": 53340}' --out bench/results/sim-calibration

--engine-args must be those the GPU run was given (a load under KV pressure sets num_gpu_blocks_override
there); where the real engine sized its own KV cache, num_gpu_blocks_override is the number of blocks it
found (the profile's engine_args.num_gpu_blocks). data_parallel_size 2 in --engine-args and --router
compare a fleet's placement. Each load runs on a simulated engine of its own, at a time_scale that keeps
its modelled token rate (the real run's, as a first guess) under --host-tokens-per-s on this host; its
figures are then read on the simulated clock (throughput x time_scale, latencies / time_scale), and the
simulation's time kept decides whether they count. Writes OUT/calibration.json and OUT/table.md.

--fit-served fits the profile's `served` terms (common/step_time.py, Served) to the served runs of
--results instead, and writes them into --profile with where they came from (fit_served):

    .venv/bin/python -m bench.calibrate_simulator --fit-served \
        --results bench/results/gpu-h200-lease/calibration/results.json --profile bench/profiles/h200-llama-3-8b.json

--fit-gpu-switch fits the `served` block's gpu_switch_s, the cost of handing a shared GPU from one engine to
another, to this script's own calibration.json files of engines sharing a GPU, simulated without it
(fit_gpu_switch), and writes it into --profile:

    .venv/bin/python -m bench.calibrate_simulator --profile bench/profiles/h200-llama-3-8b.json --fit-gpu-switch \
        bench/results/sim-placement4-h200/lease11-exact/calibration.json bench/results/sim-placement4-h200/lease11-load/calibration.json

--simulated compares the simulated runs kept in earlier calibration.json files with --results instead of
simulating again: a GPU run made after the simulation (another machine, a later lease) is a held-out check
of it. The files' runs of one load are taken together, as --results takes the real ones:

    .venv/bin/python -m bench.calibrate_simulator --profile bench/profiles/h200-llama-3-8b.json \
        --results bench/results/gpu-h200-lease-12/placement4/results.json --server ours-4fe-dp4 \
        --simulated bench/results/sim-placement4-h200/lease11-exact-switch/calibration.json --out /tmp/held-out
"""
import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from bench import vllm_timings
from bench.services import OurService
from bench.side_by_side import Load, bench_command
from bench.sim_fleet import MIN_TIME_KEPT, difference, engine_figures, engine_series, stop_on_sigterm
from common.config import ROOT, listed_gpus
from common.step_time import Served, StepTime, StepWork

TARGET_RATIO, TARGET_HITS_POINTS = 0.15, 5.0
KEYS = ("output_throughput", "median_ttft_ms", "median_tpot_ms")
SHAPE = ("p10_ttft_ms", "p25_ttft_ms", "p75_ttft_ms", "p90_ttft_ms")  # no target: where two TTFTs differ


def real_runs(results: list[dict], server: str | None) -> tuple[str, dict[str, list[dict]]]:
    """The server compared against (the first of ours in the file unless named) and its runs by load label."""
    rows = [row for row in results if row.get("load") and "error" not in (row.get("result") or {})]
    server = server or next(row["server"] for row in rows if row["server"].startswith("ours"))
    runs: dict[str, list[dict]] = {}
    for row in rows:
        if row["server"] == server:
            runs.setdefault(Load(**row["load"]).label, []).append(row)
    return server, runs


def read_results(paths: list[str]) -> list[dict]:
    """The rows of one or more results.json files, as one run of bench/side_by_side.py."""
    return [row for path in paths for row in json.loads(Path(path).read_text())]


def median_or_none(values) -> float | None:
    """The median of the values that are not None, or None when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def median_of(rows: list[dict], key: str) -> float | None:
    return median_or_none(row["result"].get(key) for row in rows)


def scrape_both(url: str) -> tuple[dict, dict]:
    """One /metrics page read both ways: the engines' series and vLLM's histograms."""
    text = vllm_timings.metrics_text(url, timeout=30)
    return engine_series(text), vllm_timings.histograms(text)


def frontend_ttft_ms(row: dict) -> float | None:
    """The mean TTFT ours' frontends measured in a GPU run (from sending a generation to its first token back):
    the served TTFT without the client's and HTTP's share, which the simulation's host divides by its
    time_scale."""
    return ((row.get("vllm_timings") or {}).get("frontend_ttft") or {}).get("mean_ms")


def fit_served(runs: dict[str, list[dict]], step_time: StepTime) -> Served:
    """The served terms from the runs of ours by load label (real_runs), in seconds:
    - first_token_s: at concurrency 1, the client's median TTFT less the profile's prefill step of the
      prompt (what the served path adds to a lone request), averaged over such loads;
    - cpu_per_decode_seq_s: of 0 and each load's median TPOT / its concurrency (where that load's steps
      would be CPU-bound exactly), the one whose steps, max(profile's decode step at the load's mean
      context, prompt + half the output, CPU), fit every load's median TPOT best (least squares on
      relative errors)."""
    loads = [(Load(**rows[0]["load"]), rows) for rows in runs.values()]
    alone = [(load, rows) for load, rows in loads if load.concurrency == 1]
    if not alone:
        raise ValueError("the runs have no load at concurrency 1, which first_token_s is fitted on")

    first_token_s = statistics.mean(median_of(rows, "median_ttft_ms") / 1e3
                                    - step_time.seconds(StepWork(load.input_len, 0, 0, load.input_len ** 2))
                                    for load, rows in alone)

    decode = [(load.concurrency, median_of(rows, "median_tpot_ms") / 1e3,
               step_time.seconds(StepWork(0, load.concurrency,
                                          load.concurrency * (load.input_len + load.output_len // 2), 0)))
              for load, rows in loads]

    def error(cpu_per_seq: float) -> float:
        return sum((max(gpu_s, cpu_per_seq * seqs) / tpot_s - 1) ** 2 for seqs, tpot_s, gpu_s in decode)

    cpu_per_decode_seq_s = min([0.0, *(tpot_s / seqs for seqs, tpot_s, _ in decode)], key=error)
    return Served(first_token_s=max(0.0, first_token_s), cpu_per_decode_seq_s=cpu_per_decode_seq_s)


def write_served(args) -> Served:
    """fit_served on --results, written into --profile as its `served` block with where it came from."""
    server, runs = real_runs(read_results(args.results), args.server)
    profile = json.loads(Path(args.profile).read_text())
    served = fit_served(runs, StepTime(**profile["step_time"]))
    fitted = {"command": args.command,
              "results": " ".join(args.results), "server": server, "loads": sorted(runs),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "how": "bench/calibrate_simulator.py fit_served"}
    profile.setdefault("served", {}).update(first_token_s=served.first_token_s,  # gpu_switch_s stays
                                            cpu_per_decode_seq_s=served.cpu_per_decode_seq_s, fitted=fitted)
    Path(args.profile).write_text(json.dumps(profile, indent=1) + "\n")
    return served


def fit_gpu_switch(calibrations: list[dict]) -> float:
    """gpu_switch_s from calibration.json files of engines sharing a GPU, simulated without a switch cost,
    in seconds. With every engine busy, a token of one engine waits for one step of each engine sharing
    its GPU, each after a switch: the real TPOT p50 less the simulated one, over those engines, is one
    switch. The mean over every row of every file."""
    switches = []
    for calibration in calibrations:
        listed = listed_gpus(calibration["args"]["cuda_visible_devices"])
        sharing = max((listed.count(gpu) for gpu in listed), default=1)
        if sharing < 2:
            raise ValueError(f"{calibration['args']['out']}: its engines did not share a GPU")
        switches += [(row["median_tpot_ms"]["real"] - row["median_tpot_ms"]["simulated"]) / 1e3 / sharing
                     for row in calibration["rows"]]
    return max(0.0, statistics.mean(switches))


def write_gpu_switch(args) -> float:
    """fit_gpu_switch on the --fit-gpu-switch files, written into --profile's `served` block with where it came from."""
    switch_s = fit_gpu_switch([json.loads(Path(path).read_text()) for path in args.fit_gpu_switch])
    profile = json.loads(Path(args.profile).read_text())
    profile.setdefault("served", {}).update(
        gpu_switch_s=switch_s,
        gpu_switch_fitted={"command": args.command, "calibrations": args.fit_gpu_switch,
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "how": "bench/calibrate_simulator.py fit_gpu_switch"})
    Path(args.profile).write_text(json.dumps(profile, indent=1) + "\n")
    return switch_s


def saved_runs(paths: list[str]) -> dict[str, dict]:
    """The simulated runs of earlier calibration.json files by load, each load's runs of every file together."""
    pooled: dict[str, dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            entry = pooled.setdefault(row["load"], {"load": row["load"], "time_scale": row["time_scale"], "runs": []})
            entry["runs"] += row["simulated_runs"]
    return pooled


def time_scale_for(real_tokens_per_s: float, host_tokens_per_s: float, least: float = 1.0) -> float:
    """Slow the simulated engine until its token rate, if it matches the real one, is one this host streams."""
    return max(least, round(real_tokens_per_s / host_tokens_per_s, 1))


def simulate(rows: list[dict], args, out: Path, port: int) -> dict:
    """The GPU run's load of `rows` (its runs) again on simulated engines, as many runs as it had."""
    load = Load(**{**rows[0]["load"], "repeats": len(rows)})
    ts = time_scale_for(median_of(rows, "output_throughput"), args.host_tokens_per_s, args.min_time_scale)
    simulator = {"profile": str((ROOT / args.profile).resolve()), "time_scale": ts}
    server = {"request_timeout_s": 36_000.0, "max_connections_per_client": 0}
    service = OurService(out / load.label.replace("/", "of"), port, str(Path(args.model).resolve()),
                         {"data_parallel_size": 1, **args.engine_args}, args.frontends, router=args.router,
                         simulator=simulator, server=server, cuda_visible_devices=args.cuda_visible_devices)
    service.start()
    runs = []
    try:
        service.wait_ready(600)
        for repeat in range(1, load.repeats + 1):
            result_file = service.run_dir / f"sim-{load.label.replace('/', 'of')}-r{repeat}.json"
            service.reset_prefix_cache()  # as bench/side_by_side.py does before each GPU run
            before, timings = scrape_both(service.url)
            with (service.run_dir / f"bench-r{repeat}.log").open("wb") as log:
                subprocess.run(bench_command(service, load, args, result_file, repeat), stdout=log,
                               stderr=subprocess.STDOUT, check=True)
            engines = args.engine_args.get("data_parallel_size", 1)
            after, timings_after = scrape_both(service.url)
            figures = engine_figures(difference(before, after), engines)
            frontend = vllm_timings.summarize(vllm_timings.difference(timings, timings_after))
            frontend = frontend.get("frontend_ttft")
            result = json.loads(result_file.read_text())
            runs.append({"output_throughput": result["output_throughput"] * ts,
                         "median_ttft_ms": result["median_ttft_ms"] / ts,
                         "median_tpot_ms": result["median_tpot_ms"] / ts,
                         "frontend_ttft_ms": frontend["mean_ms"] / ts if frontend else None,
                         **{key: result[key] / ts for key in SHAPE if key in result},
                         "preemptions": figures["preemptions"],
                         "prefix_cache_hit_rate": figures["prefix_cache_hit_rate"], "time_kept": figures["time_kept"],
                         "routing": figures["routing"], "completed": result["completed"]})
    finally:
        service.stop()
    return {"load": load.label, "time_scale": ts, "runs": runs}


def compare(real: list[dict], simulated: dict) -> dict:
    """Medians of both, the ratios (simulated / real) and whether each is within its target."""
    row = {"load": simulated["load"], "time_scale": simulated["time_scale"], "runs": len(simulated["runs"])}
    for key in KEYS:
        row[key] = ratio_of(median_of(real, key), statistics.median(run[key] for run in simulated["runs"]))
    row["frontend_ttft_ms"] = ratio_of(median_or_none(map(frontend_ttft_ms, real)),
                                       median_or_none(run.get("frontend_ttft_ms") for run in simulated["runs"]))
    for key in (*SHAPE, "preemptions"):
        row[key] = ratio_of(median_of(real, key), median_or_none(run.get(key) for run in simulated["runs"]))
    theirs = median_of(real, "prefix_cache_hit_rate")
    mine = median_or_none(run["prefix_cache_hit_rate"] for run in simulated["runs"])
    points = None if mine is None or theirs is None else 100 * (mine - theirs)
    row["prefix_cache_hit_rate"] = {"real": theirs, "simulated": mine, "points": points,
                                    "within": points is None or abs(points) <= TARGET_HITS_POINTS}
    row["time_kept"] = min(run["time_kept"] or 0.0 for run in simulated["runs"])
    row["simulated_runs"] = simulated["runs"]  # each run's figures, the routers' reasons among them
    return row


def ratio_of(real: float | None, simulated: float | None) -> dict:
    ratio = simulated / real if real and simulated is not None else None
    return {"real": real, "simulated": simulated, "ratio": ratio,
            "within": ratio is not None and abs(ratio - 1) <= TARGET_RATIO}


def shape_cell(cell: dict | None, spec: str) -> str:
    if not cell or cell["real"] is None or cell["simulated"] is None:
        return "-"
    ratio = "" if cell["ratio"] is None else f" = {cell['ratio']:.2f}"
    return f"{cell['real']:{spec}} / {cell['simulated']:{spec}}{ratio}"


def table(rows: list[dict], server: str, args) -> str:
    def ratio_cell(cell, spec):
        if cell["ratio"] is None:
            return "-"
        mark = "" if cell["within"] else " **out**"
        return f"{cell['real']:{spec}} / {cell['simulated']:{spec}} = {cell['ratio']:.2f}{mark}"

    sources = ", ".join(args.results)
    lines = [f"Simulated engine ({args.profile}) against {server} in {sources}; real / simulated = ratio "
             f"(target within {TARGET_RATIO:.0%}; hits within {TARGET_HITS_POINTS:g} points)", "",
             "| load | runs | output tok/s | TTFT p50 ms | frontends' mean TTFT ms | TPOT p50 ms | "
             "prefix-cache hits % (real / simulated) | time_scale | time kept |", "|---" * 9 + "|"]
    for row in rows:
        hits = row["prefix_cache_hit_rate"]
        hit_cell = "-" if hits["real"] is None or hits["simulated"] is None else (
            f"{100 * hits['real']:.1f} / {100 * hits['simulated']:.1f} ({hits['points']:+.1f})"
            + ("" if hits["within"] else " **out**"))
        kept = row["time_kept"]
        lines.append(f"| {row['load']} | {row['runs']} | {ratio_cell(row['output_throughput'], ',.0f')} | "
                     f"{ratio_cell(row['median_ttft_ms'], '.1f')} | {ratio_cell(row['frontend_ttft_ms'], '.1f')} | "
                     f"{ratio_cell(row['median_tpot_ms'], '.2f')} | "
                     f"{hit_cell} | {row['time_scale']:g} | {100 * kept:.1f}%"
                     f"{'' if kept >= MIN_TIME_KEPT else ' (host did not keep up: not a calibration)'} |")
    lines += ["", "The TTFT's spread and the scheduler's preemptions (a run's, all engines), real / simulated = "
              "ratio, no target:", "", "| load | TTFT p10 ms | p25 | p75 | p90 | preemptions |", "|---" * 6 + "|"]
    for row in rows:
        cells = [shape_cell(row.get(key), spec) for key, spec in zip((*SHAPE, "preemptions"), (".1f",) * 4 + (",.0f",))]
        lines.append(f"| {row['load']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", help="bench/side_by_side.py's results.json of "
                        "the GPU run (several: their runs of each load taken together); required unless --fit-gpu-switch")
    parser.add_argument("--server", help="the server of that file to compare with (default: the first ours-*)")
    parser.add_argument("--model", help="the model directory the GPU run served (its config and tokenizer; no "
                        "weights are read); required unless --fit-served or --fit-gpu-switch")
    parser.add_argument("--fit-served", action="store_true", help="fit the profile's served terms to --results "
                        "and write them into --profile; no simulation")
    parser.add_argument("--fit-gpu-switch", nargs="+", metavar="CALIBRATION_JSON", help="fit the profile's "
                        "gpu_switch_s to these calibration.json files of engines sharing a GPU, simulated without "
                        "one, and write it into --profile; no simulation")
    parser.add_argument("--simulated", nargs="+", metavar="CALIBRATION_JSON", help="compare the simulated runs "
                        "kept in these calibration.json files with --results; no simulation")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--engine-args", default="{}", help="JSON: the GPU run's --engine-args")
    parser.add_argument("--router", default="prefix", help="router.policy as bench/side_by_side.py's "
                        "ours:N@POLICY names it (the GPU run's server, e.g. approximate or load)")
    parser.add_argument("--cuda-visible-devices", default="", help="inference.yml's cuda_visible_devices for the "
                        "simulated engines, as the GPU run had it: \"0,0,0,0\" puts four on one GPU, taking turns")
    parser.add_argument("--frontends", type=int, default=2)
    parser.add_argument("--host-tokens-per-s", type=float, default=1500.0,
                        help="output tokens a second this host streams while keeping time")
    parser.add_argument("--min-time-scale", type=float, default=1.0, help="the least time_scale: a larger one "
                        "shrinks this host's own per-request cost (HTTP, streaming) on the simulated clock")
    parser.add_argument("--warmups", type=int, default=8, help="as the GPU runs had (bench/gpu/gpu_common.sh)")
    parser.add_argument("--port", type=int, default=7480)
    parser.add_argument("--out", default="bench/results/sim-calibration")
    args = parser.parse_args(argv)
    args.command = "python -m bench.calibrate_simulator " + shlex.join(sys.argv[1:] if argv is None else argv)
    if not args.results and not args.fit_gpu_switch:
        parser.error("--results is required unless --fit-gpu-switch")
    if not args.model and not args.fit_served and not args.fit_gpu_switch and not args.simulated:
        parser.error("--model is required unless --fit-served, --fit-gpu-switch or --simulated")
    args.engine_args = json.loads(args.engine_args)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.fit_served:
        print(write_served(args))
        return
    if args.fit_gpu_switch:
        print(f"gpu_switch_s {write_gpu_switch(args)}")
        return
    stop_on_sigterm()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    server, runs = real_runs(read_results(args.results), args.server)
    rows = []
    saved = saved_runs(args.simulated) if args.simulated else {}
    for index, (label, real) in enumerate(runs.items()):
        if args.simulated and label not in saved:
            continue
        simulated = saved[label] if args.simulated else simulate(real, args, out, args.port + 10 * index)
        rows.append(compare(real, simulated))
        (out / "calibration.json").write_text(json.dumps({"args": vars(args), "server": server, "rows": rows},
                                                         indent=1))
        print(table(rows[-1:], server, args).splitlines()[-1], flush=True)
    (out / "table.md").write_text(table(rows, server, args))
    print(table(rows, server, args))


if __name__ == "__main__":
    main()
