"""How long one engine step takes: the model the simulated engine sleeps by, and the profile file its
coefficients come from (measured on a real GPU with vLLM, kept in bench/profiles/).

    step_s = constant_s + per_prefill_token_s * prefill_tokens + per_decode_seq_s * decode_seqs
             + per_kv_token_s * kv_tokens + per_prefill_attention_s * prefill_attention

for one step, where
- prefill_tokens: prompt tokens computed in the step (chunks of prompts not yet complete; prefix-cache
  hits are not computed and not counted);
- decode_seqs: requests generating a token from a complete prompt;
- kv_tokens: over those decode requests, the tokens each holds so far (prompt + generated: the KV it reads);
- prefill_attention: over the prefill chunks, chunk tokens x (tokens in KV before the chunk + chunk tokens).

The profile (JSON):
    {"format": 1,
     "step_time": {"constant_s": ..., "per_prefill_token_s": ..., "per_decode_seq_s": ...,
                   "per_kv_token_s": ..., "per_prefill_attention_s": ...},
     "engine_args": {the vLLM arguments it was measured under: max_num_seqs, max_num_batched_tokens,
                     block_size, num_gpu_blocks, max_model_len, ...},
     "measured": {"machine": ..., "gpu": ..., "vllm": ..., "model": ..., "date": ..., "command": ..., "fit": {...}},
     "samples": [{"prefill_tokens": ..., "decode_seqs": ..., "kv_tokens": ..., "prefill_attention": ...,
                  "step_s": ...}, ...],
     "served": {"first_token_s": ..., "cpu_per_decode_seq_s": ..., "gpu_switch_s": ...,
                "fitted": {...}, "gpu_switch_fitted": {...}},
     "prefix_cache_lookups": "admitted" or "every"}

`served` is optional: what the served path costs beyond the engine stepped alone (the profile's steps),
fitted from served runs by bench/calibrate_simulator.py --fit-served and --fit-gpu-switch (class Served).
`prefix_cache_lookups` is optional ("admitted"): which lookups the measured vLLM counts in its
prefix-cache hit rate (class Profile), so that a simulated engine reports the same figure.
"""
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

FORMAT = 1

Seconds = Annotated[float, msgspec.Meta(ge=0)]


class StepWork(NamedTuple):
    """What one step computes, in the model's four counts."""

    prefill_tokens: int = 0
    decode_seqs: int = 0
    kv_tokens: int = 0
    prefill_attention: int = 0


class StepTime(msgspec.Struct, forbid_unknown_fields=True):
    constant_s: Seconds
    per_prefill_token_s: Seconds
    per_decode_seq_s: Seconds
    per_kv_token_s: Seconds
    per_prefill_attention_s: Seconds

    def seconds(self, work: StepWork) -> float:
        return (self.constant_s + self.per_prefill_token_s * work.prefill_tokens
                + self.per_decode_seq_s * work.decode_seqs + self.per_kv_token_s * work.kv_tokens
                + self.per_prefill_attention_s * work.prefill_attention)


class Served(msgspec.Struct, forbid_unknown_fields=True):
    """What a served engine costs that the step-time profile (vLLM's engine core stepped alone, in
    process) does not show, each term from served runs of the real engine:
    - first_token_s: every request's fixed latency from the client's send to its first token beyond the
      engine's prefill step: HTTP, tokenizing, ZeroMQ, vLLM's input processing, async scheduling handing
      the first token back a step late, publishing, streaming it out. It shifts the whole stream, and
      requests added together still reach the scheduler together (vLLM's own timings of a burst show
      them scheduled at once: queue ~0.1 ms, prefill as long as one full batch).
    - cpu_per_decode_seq_s: the engine core's CPU work per running sequence in a step (scheduling,
      output processing, publishing). Under async scheduling it runs beside the GPU's forward pass, so
      a step takes the longer of the two; the profile times the GPU's part only.
    - gpu_switch_s: the GPU time lost each time engines sharing one GPU hand it from one to another while
      both have work (the GPU switching between their processes), fitted from served runs of engines
      sharing a GPU against the simulation without it."""

    first_token_s: Seconds = 0.0
    cpu_per_decode_seq_s: Seconds = 0.0
    gpu_switch_s: Seconds = 0.0
    fitted: dict[str, Any] = {}  # where the terms came from: the command, the runs, the numbers fitted
    gpu_switch_fitted: dict[str, Any] = {}  # where gpu_switch_s came from

    def step_seconds(self, gpu_s: float, work: StepWork) -> float:
        return max(gpu_s, self.cpu_per_decode_seq_s * work.decode_seqs)


class Sample(msgspec.Struct):
    """One measured point: its counts are the mean over the steps measured there (a profile that pools
    several passes over its grid writes fractions)."""

    prefill_tokens: float
    decode_seqs: float
    kv_tokens: float
    prefill_attention: float
    step_s: float


class Profile(msgspec.Struct):
    format: int
    step_time: StepTime
    engine_args: dict[str, Any] = {}
    measured: dict[str, Any] = {}
    samples: list[Sample] = []
    served: Served | None = None
    # Which prefix-cache lookups the measured vLLM counts in its hit rate: "admitted", each request's
    # lookup when the scheduler admits it (vLLM 0.32), or "every", also each lookup of a waiting request
    # that found too few free blocks and stayed waiting, once a step (vLLM 0.26.0).
    prefix_cache_lookups: Literal["admitted", "every"] = "admitted"


def load_profile(path: Path) -> Profile:
    """The profile at `path`; ValueError saying what is wrong with it."""
    try:
        profile = msgspec.json.decode(path.read_bytes(), type=Profile)
    except OSError as error:
        raise ValueError(f"cannot read the step-time profile {path}: {error.strerror}") from None
    except msgspec.ValidationError as error:
        raise ValueError(f"the step-time profile {path} is not valid: {error}") from None
    except msgspec.DecodeError as error:
        raise ValueError(f"the step-time profile {path} is not JSON: {error}") from None
    if profile.format != FORMAT:
        raise ValueError(f"the step-time profile {path} has format {profile.format}; this version reads {FORMAT}")
    return profile
