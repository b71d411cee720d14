"""The load every bench sends: random prompts of a fixed token length, from a fixed seed.

Prompts are drawn as token ids (as `vllm bench serve --dataset-name random` does), so the ZeroMQ
and LLMEngine benches send ids, and the HTTP bench sends their text, re-encoded and cut to length.
"""
import random

from transformers import AutoTokenizer


class Workload:
    def __init__(self, tokenizer_path: str, seed: int = 0):
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.rng = random.Random(seed)
        special = set(self.tokenizer.all_special_ids)
        self.vocabulary = [i for i in range(len(self.tokenizer)) if i not in special]

    def token_ids(self, length: int) -> list[int]:
        return self.rng.choices(self.vocabulary, k=length)

    def text(self, length: int) -> tuple[str, int]:
        """A prompt whose text encodes to about `length` tokens, and that token count."""
        ids = self.encode(self.tokenizer.decode(self.token_ids(length)))[:length]
        text = self.tokenizer.decode(ids)
        return text, len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))
