"""Stop strings, matched on the detokenized text as it streams.

One Aho–Corasick automaton per set of stop strings (shared by every choice of a request) reads each
new character once. Its state is the longest tail of the text that is still the start of some stop
string: exactly the text held back, so a streamed client never sees part of a stop string that then
ends the output, and no text is looked at twice.
"""
from collections import deque
from functools import lru_cache


class StopAutomaton:
    """Aho–Corasick over the stop strings. State 0 is the root; a state stands for the prefix of a
    stop string that leads to it, `depth[state]` long."""

    def __init__(self, stops: tuple[str, ...]):
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        self.fail = [0]
        self.match = [0]  # length of the longest stop string that ends at this state, 0 if none
        for stop in stops:
            self._insert(stop)
        self._link()

    def _insert(self, stop: str) -> None:
        state = 0
        for char in stop:
            following = self.goto[state].get(char)
            if following is None:
                following = len(self.goto)
                self.goto.append({})
                self.depth.append(self.depth[state] + 1)
                self.fail.append(0)
                self.match.append(0)
                self.goto[state][char] = following
            state = following
        self.match[state] = len(stop)

    def _link(self) -> None:
        pending = deque(self.goto[0].values())
        while pending:
            state = pending.popleft()
            for char, following in self.goto[state].items():
                back = self.fail[state]
                while back and char not in self.goto[back]:
                    back = self.fail[back]
                self.fail[following] = self.goto[back].get(char, 0) if state else 0
                # A shorter stop string that ends here is a match too; the longest starts earliest.
                self.match[following] = self.match[following] or self.match[self.fail[following]]
                pending.append(following)

    def next_state(self, state: int, char: str) -> int:
        while state and char not in self.goto[state]:
            state = self.fail[state]
        return self.goto[state].get(char, 0)


@lru_cache(maxsize=16)
def automaton_for(stops: tuple[str, ...]) -> StopAutomaton:
    # The n choices of a request, and repeated requests, share one automaton.
    return StopAutomaton(stops)


class StopStrings:
    def __init__(self, stops: list[str], include_in_output: bool = False):
        self.stops = tuple(stop for stop in stops if stop)
        self.automaton = automaton_for(self.stops) if self.stops else None
        self.include_in_output = include_in_output
        self.state = 0
        self.held: deque[str] = deque()  # the text held back, in pieces; as long as depth[state]
        self.held_chars = 0
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that is safe to send now; after a match, `matched` is set.
        Where several stop strings match, the one that ends first wins (the longest of those)."""
        if self.automaton is None or self.matched is not None:
            return text if self.matched is None else ""
        automaton, state = self.automaton, self.state
        for position, char in enumerate(text):
            state = automaton.next_state(state, char)
            if automaton.match[state]:
                return self._cut(text[: position + 1], automaton.match[state])
        self.state = state
        self.held.append(text)
        self.held_chars += len(text)
        return self._release(self.held_chars - automaton.depth[state])

    def flush(self) -> str:
        return self._release(self.held_chars)

    def _cut(self, text: str, length: int) -> str:
        """The text up to a stop string of `length` that ends at the end of `text`."""
        self.held.append(text)
        whole = "".join(self.held)  # joined once, when the output ends
        self.held.clear()
        self.held_chars = 0
        self.matched = whole[len(whole) - length :]
        return whole if self.include_in_output else whole[: len(whole) - length]

    def _release(self, count: int) -> str:
        """Take the first `count` held characters."""
        pieces = []
        while count > 0:
            piece = self.held.popleft()
            if len(piece) > count:
                piece, rest = piece[:count], piece[count:]
                self.held.appendleft(rest)
            pieces.append(piece)
            count -= len(piece)
            self.held_chars -= len(piece)
        return "".join(pieces)
