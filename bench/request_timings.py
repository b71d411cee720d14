"""What one bench run measured: per-request timings in, one summary (tokens/s, TTFT, TPOT, ITL) out.

Every bench in this folder fills `RequestResult`s and hands them to `summarize`, so the HTTP,
ZeroMQ and LLMEngine numbers mean the same thing.
"""
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestResult:
    start: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    first_token_at: float | None = None
    end: float | None = None
    # Arrival time of every chunk (HTTP) or step delta (ZeroMQ, LLMEngine) that carried tokens.
    chunk_times: list[float] = field(default_factory=list)
    error: str | None = None

    def record_chunk(self, now: float, tokens: int = 0) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        self.chunk_times.append(now)
        self.output_tokens += tokens

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.start

    @property
    def tpot(self) -> float | None:
        if self.first_token_at is None or self.end is None or self.output_tokens < 2:
            return None
        return (self.end - self.first_token_at) / (self.output_tokens - 1)

    def inter_chunk_gaps(self) -> list[float]:
        return list(np.diff(self.chunk_times)) if len(self.chunk_times) > 1 else []


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    ms = np.asarray(values) * 1000.0
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def summarize(results: list[RequestResult], duration_s: float) -> dict:
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_tokens for r in done)
    return {
        "duration_s": duration_s,
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "request_throughput": len(done) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration_s,
        "ttft_ms": _percentiles_ms([r.ttft for r in done if r.ttft is not None]),
        "tpot_ms": _percentiles_ms([r.tpot for r in done if r.tpot is not None]),
        "itl_ms": _percentiles_ms([gap for r in done for gap in r.inter_chunk_gaps()]),
        "latency_ms": _percentiles_ms([r.end - r.start for r in done]),
    }


def report(title: str, summary: dict) -> str:
    lines = [
        f"== {title}",
        f"requests          {summary['completed']} done, {summary['failed']} failed in {summary['duration_s']:.2f} s",
        f"tokens            {summary['prompt_tokens']} in, {summary['output_tokens']} out",
        f"request/s         {summary['request_throughput']:.2f}",
        f"output tokens/s   {summary['output_throughput']:.1f}",
        f"total tokens/s    {summary['total_token_throughput']:.1f}",
    ]
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "latency_ms"):
        value = summary[name]
        lines.append(f"{name:<17} p50 {value['p50']:.2f}  p99 {value['p99']:.2f}  mean {value['mean']:.2f}")
    if summary["errors"]:
        lines.append(f"errors            {summary['errors']}")
    return "\n".join(lines)


def save(path: str, config: dict, summary: dict) -> None:
    with open(path, "w") as file:
        json.dump({"config": config, "summary": summary}, file, indent=2)
