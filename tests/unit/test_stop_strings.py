"""The stop-string matcher on adversarial input, with its work counted in automaton transitions."""
import random

import pytest

from frontend.text.stop_strings import StopStrings


def stream(stops: StopStrings, pieces: list[str]) -> str:
    return "".join(stops.feed(piece) for piece in pieces) + ("" if stops.matched else stops.flush())


def reference(text: str, stops: list[str], include: bool) -> str:
    """The first stop string to end in the text ends it (the longest of those that end there)."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if stop and text[:end].endswith(stop)]
        if ending:
            stop = max(ending, key=len)
            return text[:end] if include else text[: end - len(stop)]
    return text


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("seed", range(200))
def test_matches_a_plain_search_on_random_text(seed, include):
    rng = random.Random(seed)
    alphabet = "abc华"
    stops = ["".join(rng.choices(alphabet, k=rng.randrange(1, 6))) for _ in range(rng.randrange(1, 5))]
    text = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 5)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert stream(StopStrings(stops, include), pieces) == reference(text, stops, include)


def test_nothing_of_a_stop_string_is_shown_before_it_ends_the_output():
    stops = StopStrings(["the end"])
    shown = [stops.feed(char) for char in "so the en"]
    assert "".join(shown) == "so "
    assert stops.feed("d!") == "" and stops.matched == "the end"


class CountingAutomaton:
    def __init__(self, automaton):
        self.automaton = automaton
        self.match, self.depth = automaton.match, automaton.depth
        self.transitions = 0

    def next_state(self, state, char):
        self.transitions += 1
        return self.automaton.next_state(state, char)


@pytest.mark.parametrize("pattern", ["many stops", "long stop", "repeats"])
def test_each_character_is_read_once_however_many_stop_strings(pattern):
    """75,000 stop strings that all almost match: the text is read once, not once per stop string."""
    text = "a" * 3000
    stops = {"many stops": [f"{'a' * 5}{i}" for i in range(75_000)], "long stop": ["a" * 2000 + "b"],
             "repeats": ["ab", "aab", "aaab"]}[pattern]
    matcher = StopStrings(stops)
    matcher.automaton = counting = CountingAutomaton(matcher.automaton)
    shown = "".join(matcher.feed(char) for char in text) + matcher.flush()
    assert shown == text
    assert counting.transitions == len(text)


def test_choices_of_one_request_share_the_automaton():
    stops = [f"stop{i}" for i in range(1000)]
    assert StopStrings(stops).automaton is StopStrings(list(stops)).automaton
