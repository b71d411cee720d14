"""Throughput and median TPOT against concurrency, one line per server configuration, from the
`vllm bench serve` results that bench/side_by_side.py saved (SERVER-INxOUT@C[-rN].json); repeats of
one point are averaged.

    python -m bench.plot --out bench/results/gpu-h100.png run1=bench/results/gpu-h100-run1 run2=...
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="[LABEL=]DIRECTORY with side_by_side results")
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args()
    plot(read_runs(args.runs), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
