"""The simulated model's tokens: which token each step gives a request, and when the request ends.

Tokens are drawn at random from the served tokenizer's vocabulary (special tokens left out, or from
`allowed_token_ids`), from the request's own random generator: seeded by the request's `seed`, so a
seeded request repeats itself, or by the engine's. Each token is EOS with `eos_probability` once
`min_tokens` are out, unless `ignore_eos`; before `min_tokens` no EOS and no stop token id is given,
as vLLM's min-tokens processor masks them. A request ends as vLLM's check_stop ends it: on EOS
("stop"), on a stop token id ("stop", the id as stop_reason), at max_tokens or max_model_len ("length").
"""
import random
from typing import NamedTuple

import msgspec

from engine_worker.simulator.vocabulary import Vocabulary

# Draws for a token that may be given before one is taken anyway (a stop id within min_tokens does
# not end the request; the draws only keep it rare).
MAX_DRAWS = 8


class Sampling(msgspec.Struct, forbid_unknown_fields=True):
    """vLLM's SamplingParams keyword arguments as the wire carries them. The simulated engine models
    max_tokens, min_tokens, ignore_eos, stop_token_ids, seed, logprobs and allowed_token_ids; it
    takes the rest, which shape a real model's choice of token, and draws tokens at random all the same."""

    max_tokens: int = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    seed: int | None = None
    logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    n: int = 1
    prompt_logprobs: int | None = None
    structured_outputs: dict | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    bad_words: list[str] | None = None


class Logprob(NamedTuple):
    """vLLM's Logprob, as the step loop reads it."""

    logprob: float
    rank: int | None


class TokenSampler:
    def __init__(self, vocabulary: Vocabulary, eos_probability: float):
        self.vocabulary = vocabulary
        self.eos_probability = eos_probability
        self.never_drawn = vocabulary.special_ids | vocabulary.stop_ids

    def next_token(self, request) -> int:
        sampling, rng = request.sampling, request.rng
        may_stop = request.num_output_tokens >= sampling.min_tokens
        if may_stop and not sampling.ignore_eos and rng.random() < self.eos_probability:
            return self.vocabulary.eos_token_id
        allowed = sampling.allowed_token_ids
        for _ in range(MAX_DRAWS):
            token = rng.choice(allowed) if allowed else rng.randrange(self.vocabulary.size)
            if (allowed or token not in self.never_drawn) and (may_stop or token not in sampling.stop_token_ids):
                break
        return token

    def logprobs(self, token: int, rng: random.Random, top: int) -> dict[int, Logprob]:
        """The drawn token as the most likely one, and the `top` - 1 next ones below it."""
        logprob = -rng.expovariate(2.0)
        entries = {token: Logprob(logprob, 1)}
        while len(entries) < min(top, self.vocabulary.size):
            alternative = rng.randrange(self.vocabulary.size)
            if alternative not in entries:
                logprob -= rng.expovariate(1.0)
                entries[alternative] = Logprob(logprob, len(entries) + 1)
        return entries


def finish_of(request, eos_token_id: int, max_model_len: int) -> tuple[str | None, int | None]:
    """(finish_reason, stop_reason) after the request's last token; (None, None) while it goes on."""
    sampling, last = request.sampling, request.token_ids[-1]
    if request.num_output_tokens >= sampling.min_tokens:
        if last == eos_token_id and not sampling.ignore_eos:
            return "stop", None
        if last in sampling.stop_token_ids:
            return "stop", last
    if request.num_output_tokens >= sampling.max_tokens or request.num_tokens >= max_model_len:
        return "length", None
    return None, None
