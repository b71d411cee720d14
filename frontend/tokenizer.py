"""The model's tokenizer, loaded from the same place the engine loaded the model."""
from transformers import AutoTokenizer


class Tokenizer:
    def __init__(self, source: str):
        self.source = source
        self.hf = AutoTokenizer.from_pretrained(source)
        self.backend = self.hf.backend_tokenizer  # the Rust tokenizer: fast encode and decode

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
