"""Summarize `py-spy record --format raw` files: samples per process, the functions that hold them.

    python -m bench.profile_summary bench/results/.../py-spy-*.txt

py-spy samples 100 times a second and leaves idle threads out, so `samples / (100 * seconds)` is
how busy a process was; "self" counts a function where a sample ended, "inclusive" anywhere on it.
"""
import sys
from collections import Counter


def summarize(path: str, top: int = 12) -> str:
    total, own, inclusive = 0, Counter(), Counter()
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames, count = stack.split(";"), int(count)
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    lines = [f"== {path}: {total} samples"]
    lines += [f"  self {count:5d}  {frame[:140]}" for frame, count in own.most_common(top)]
    lines += [f"  incl {count:5d}  {frame[:140]}" for frame, count in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(summarize(path) for path in sys.argv[1:]))
