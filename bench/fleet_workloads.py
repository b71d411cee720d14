"""Loads for a simulated fleet, as bench/fleet_client.py sends them: prompts of random token ids from a
seeded generator, arrival times in simulated seconds.
"""
import random

from bench.fleet_client import Session, Turn


class PromptMaker:
    """Random prompts over a vocabulary, the same ones for the same seed."""

    def __init__(self, vocabulary: list[int], seed: int = 0):
        self.vocabulary = vocabulary
        self.rng = random.Random(seed)

    def ids(self, length: int) -> list[int]:
        return self.rng.choices(self.vocabulary, k=length)


def poisson_times(rate: float, duration_s: float, rng: random.Random, start_s: float = 0.0) -> list[float]:
    """Arrival times of a Poisson process of `rate` per simulated second over [start, start + duration)."""
    times, at = [], start_s
    while True:
        at += rng.expovariate(rate)
        if at >= start_s + duration_s:
            return times
        times.append(at)


def single(prompt: list[int], max_tokens: int, at_s: float, tag: str = "") -> Session:
    return Session([Turn(prompt, max_tokens, at_s, tag)])


def random_requests(maker: PromptMaker, times: list[float], input_len: int, output_len: int,
                    tag: str = "random") -> list[Session]:
    return [single(maker.ids(input_len), output_len, at, tag) for at in times]


class SharedPrefixPrompts:
    """llm-d's shared_prefix data (inference-perf): `groups` system prompts of `system_len` tokens, each with
    `users` questions of `question_len` tokens; a request is one (group, user) pair's prompt, drawn at
    random, so the same whole prompt comes again."""

    def __init__(self, maker: PromptMaker, groups: int, users: int, system_len: int, question_len: int,
                 draw_seed: int = 0):
        systems = [maker.ids(system_len) for _ in range(groups)]
        self.prompts = [system + maker.ids(question_len) for system in systems for _ in range(users)]
        self.users = users
        self.rng = random.Random(draw_seed)  # which prompt each request sends: apart from their tokens

    def requests(self, times: list[float], output_len: int, tag: str = "shared-prefix") -> list[Session]:
        return [single(self.rng.choice(self.prompts), output_len, at, tag) for at in times]
