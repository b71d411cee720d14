"""Incremental detokenization: text for new token ids, in pieces whose concatenation is the
decode of all ids.

Decoding a window that starts one piece back (prefix_offset) gives byte-level BPE the context it
needs; text ending in U+FFFD is an incomplete UTF-8 sequence, so it waits for the next token, and
flush() gives whatever is left when the request ends.
"""
from tokenizers import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        new_text = text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text

    def flush(self) -> str:
        if self.read_offset == len(self.ids):
            return ""
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        self.read_offset = len(self.ids)
        return text[len(prefix_text) :]
