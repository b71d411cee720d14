"""Incremental detokenization and stop strings, on the embedded model's real tokenizer."""
import random

import pytest

from frontend.detokenizer import Detokenizer
from frontend.stop_strings import StopStrings


@pytest.mark.parametrize("seed", range(200))
def test_pieces_concatenate_to_the_decode_of_all_ids(tokenizer, seed):
    rng = random.Random(seed)
    # Low ids are single bytes: they split multi-byte characters, the hard case.
    high = 300 if seed % 2 else 8192
    ids = [rng.randrange(high) for _ in range(rng.randrange(1, 80))]
    detokenizer = Detokenizer(tokenizer.backend)
    text, i = "", 0
    while i < len(ids):
        step = rng.randrange(1, 4)
        text += detokenizer.add(ids[i : i + step])
        i += step
    text += detokenizer.flush()
    assert text == tokenizer.decode(ids)


def test_an_incomplete_character_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("华")
    byte_ids = [tokenizer.backend.token_to_id(t) for t in tokenizer.backend.encode("华").tokens]
    assert ids == byte_ids
    if len(ids) > 1:
        detokenizer = Detokenizer(tokenizer.backend)
        assert detokenizer.add(ids[:-1]) == ""
        assert detokenizer.add(ids[-1:]) == "华"


def test_stop_string_split_across_pieces_is_never_shown():
    stops = StopStrings(["END"])
    shown = [stops.feed(piece) for piece in ["hello E", "N", "D and more"]]
    assert "".join(shown) == "hello "
    assert stops.matched == "END"


def test_stop_string_can_be_kept_in_the_output():
    stops = StopStrings(["END"], include_in_output=True)
    assert stops.feed("a END b") == "a END"


def test_held_back_text_that_was_no_stop_comes_out():
    stops = StopStrings(["END"])
    shown = stops.feed("abc E") + stops.feed("Nx") + stops.flush()
    assert shown == "abc ENx"
    assert stops.matched is None


def test_earliest_of_several_stops_wins():
    stops = StopStrings(["zz", "b"])
    assert stops.feed("a b zz") == "a "
    assert stops.matched == "b"
