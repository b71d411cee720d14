"""Incremental detokenization: text for new token ids, in pieces whose concatenation is the
decode of all ids.

Decoding a window that starts one piece back (prefix_offset) gives the tokenizer's decoder the
context it needs (a leading space, a byte-level merge); text ending in U+FFFD is an incomplete UTF-8
sequence, so it waits for the next token, and flush() gives whatever is left when the request ends.

Each call decodes only the window, never the text from the start: skipped special tokens are left
out of it before they get there, and a window that still ends in U+FFFD after MAX_UNREAD tokens
(bytes that are not UTF-8, or pieces that keep ending inside a character) is cut where no character
spans the cut, within its last 3 tokens (a UTF-8 character is at most 4 bytes), or, where there is
no such place, given out as it is.
"""
from tokenizers import Tokenizer

MAX_UNREAD = 8

_special_ids: dict[int, tuple[Tokenizer, frozenset[int]]] = {}


def special_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids that skip_special_tokens leaves out, computed once per tokenizer."""
    known = _special_ids.get(id(tokenizer))
    if known is None or known[0] is not tokenizer:
        if len(_special_ids) > 8:
            _special_ids.clear()
        ids = frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special)
        known = _special_ids[id(tokenizer)] = (tokenizer, ids)
    return known[1]


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skipped = special_ids(tokenizer) if skip_special_tokens else frozenset()
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.prefix_text = ""  # the decode of ids[prefix_offset:read_offset]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def add(self, token_ids: list[int]) -> str:
        if self.skipped:
            token_ids = [token_id for token_id in token_ids if token_id not in self.skipped]
        if not token_ids:
            return ""
        self.ids.extend(token_ids)
        text = self.decode(self.ids[self.prefix_offset :])
        waiting = len(text) <= len(self.prefix_text) or text.endswith("\ufffd")
        if not waiting:
            return self._advance(text, len(self.ids))
        if len(self.ids) - self.read_offset < MAX_UNREAD:
            return ""
        for cut in range(len(self.ids) - 1, max(self.read_offset, len(self.ids) - 4), -1):
            head = self.decode(self.ids[self.prefix_offset : cut])
            if head + self.decode(self.ids[cut:]) == text:  # no character spans the cut
                return self._advance(head, cut)
        return self._advance(text, len(self.ids))

    def flush(self) -> str:
        if self.read_offset == len(self.ids):
            return ""
        return self._advance(self.decode(self.ids[self.prefix_offset :]), len(self.ids))

    def _advance(self, text: str, read_to: int) -> str:
        """Give out the text up to id `read_to`; the piece just read is the next window's prefix."""
        new_text = text[len(self.prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, read_to
        self.prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        return new_text
