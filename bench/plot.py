"""Throughput and median TPOT against concurrency, one line per server configuration, from the
`vllm bench serve` results that bench/side_by_side.py saved (SERVER-INxOUT@C[-rN].json); repeats of
one point are averaged. With --ladder, a ladder of bench/llmd_ladder.py: output throughput and TTFT p90
against the request rate, one line per router policy, one column per fleet size.

    python -m bench.plot --out bench/results/gpu-h100.png run1=bench/results/gpu-h100-run1 run2=...
    python -m bench.plot --ladder bench/results/llmd-ladder/ladder.json --out bench/results/llmd-ladder/ladder.png
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULT_NAME = re.compile(r"(?P<server>.+)-(?P<input>\d+)x(?P<output>\d+)@(?P<concurrency>\d+)(-r\d+)?\.json$")


def read_runs(runs: list[str]) -> dict:
    """{(input, output): {series: [(concurrency, output tok/s, median TPOT)]}}, repeats averaged"""
    runs_of = defaultdict(list)
    for run in runs:
        label, _, directory = run.rpartition("=")
        for path in sorted(Path(directory).rglob("*.json")):
            match = RESULT_NAME.match(path.name)
            if not match:
                continue
            result = json.loads(path.read_text())
            series = f"{match['server']} ({label})" if label else match["server"]
            shape = (int(match["input"]), int(match["output"]))
            runs_of[shape, series, int(match["concurrency"])].append(
                (result["output_throughput"], result["median_tpot_ms"]))
    shapes = defaultdict(lambda: defaultdict(list))
    for (shape, series, concurrency), points in runs_of.items():
        shapes[shape][series].append((concurrency, *np.mean(points, axis=0)))
    return shapes


def plot(shapes: dict, out: str) -> None:
    names = sorted({name for series in shapes.values() for name in series})
    palette = plt.cm.tab10 if len(names) <= 10 else plt.cm.tab20  # tab20's neighbours look alike
    colors = {name: palette(index % palette.N) for index, name in enumerate(names)}
    figure, axes = plt.subplots(2, len(shapes), figsize=(7 * len(shapes), 9), squeeze=False)
    for column, (shape, series) in enumerate(sorted(shapes.items())):
        throughput, tpot = axes[0][column], axes[1][column]
        for name, points in sorted(series.items()):
            points.sort()
            concurrency = [p[0] for p in points]
            style = {"linestyle": "--" if name.startswith("vllm") else "-", "marker": "o", "color": colors[name],
                     "label": name}
            throughput.plot(concurrency, [p[1] for p in points], **style)
            tpot.plot(concurrency, [p[2] for p in points], **style)
        throughput.set_title(f"{shape[0]} in / {shape[1]} out: output tokens/s")
        tpot.set_title(f"{shape[0]} in / {shape[1]} out: median TPOT (ms)")
        for axis in (throughput, tpot):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrency")
            axis.grid(True, alpha=0.3)
        throughput.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def plot_ladder(table: list[dict], out: str) -> None:
    """`table`: bench/llmd_ladder.py's medians, one row per (engines, policy, rate)."""
    fleets = sorted({row["engines"] for row in table})
    policies = sorted({row["policy"] for row in table})
    colors = {policy: plt.cm.tab10(index % 10) for index, policy in enumerate(policies)}
    figure, axes = plt.subplots(2, len(fleets), figsize=(7 * len(fleets), 9), squeeze=False)
    for column, engines in enumerate(fleets):
        throughput, ttft = axes[0][column], axes[1][column]
        for policy in policies:
            rows = sorted((r for r in table if r["engines"] == engines and r["policy"] == policy),
                          key=lambda r: r["rate"])
            style = {"marker": "o", "color": colors[policy], "label": policy}
            throughput.plot([r["rate"] for r in rows], [r["output_throughput"] for r in rows], **style)
            ttft.plot([r["rate"] for r in rows], [r["ttft_p90_s"] for r in rows], **style)
            censored = [r for r in rows if r["censored"]]  # cut off before their first token: a lower bound
            ttft.plot([r["rate"] for r in censored], [r["ttft_p90_s"] for r in censored], linestyle="", marker="o",
                      markerfacecolor="white", color=colors[policy])
        throughput.set_title(f"{engines} engines: output tokens/s")
        ttft.set_title(f"{engines} engines: TTFT p90 (s; hollow: at least)")
        ttft.set_yscale("log")
        for axis in (throughput, ttft):
            axis.set_xlabel("request rate (requests/s)")
            axis.grid(True, alpha=0.3)
        throughput.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="[LABEL=]DIRECTORY with side_by_side results")
    parser.add_argument("--ladder", help="ladder.json of bench/llmd_ladder.py")
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args()
    if args.ladder:
        from bench.llmd_ladder import medians

        plot_ladder(medians(json.loads(Path(args.ladder).read_text())["runs"]), args.out)
    else:
        plot(read_runs(args.runs), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
