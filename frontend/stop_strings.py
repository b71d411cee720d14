"""Stop strings, matched on the detokenized text as it streams.

Text that could be the start of a stop string is held back until the next piece shows whether it
is, so a streamed client never sees part of a stop string that then ends the output.
"""


class StopStrings:
    def __init__(self, stops: list[str], include_in_output: bool = False):
        self.stops = [stop for stop in stops if stop]
        self.include_in_output = include_in_output
        self.hold = max((len(stop) for stop in self.stops), default=1) - 1
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that is safe to send now; after a match, `matched` is set."""
        if not self.stops or self.matched is not None:
            return text if self.matched is None else ""
        self.pending += text
        cut = self._first_match()
        if cut is not None:
            out, self.pending = self.pending[:cut], ""
            return out
        release = len(self.pending) - self.hold
        if release <= 0:
            return ""
        out, self.pending = self.pending[:release], self.pending[release:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _first_match(self) -> int | None:
        found = [(self.pending.find(stop), stop) for stop in self.stops]
        found = [(index, stop) for index, stop in found if index >= 0]
        if not found:
            return None
        index, self.matched = min(found)
        return index + len(self.matched) if self.include_in_output else index
