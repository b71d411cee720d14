"""Prompt encoding, incremental detokenization and stop strings, on the embedded model's real tokenizer."""
import asyncio
import random

import pytest

from frontend.text.detokenizer import Detokenizer
from frontend.text.stop_strings import StopStrings


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


async def test_prompts_encoded_together_get_each_their_own_ids(tokenizer):
    rng = random.Random(0)
    words = ["def", "return", "华", "class", " ", "\n", "import os", "é"]
    requests = [([" ".join(rng.choices(words, k=rng.randrange(1, 300))) for _ in range(rng.randrange(1, 4))], i % 3 != 0)
                for i in range(40)]
    results = await asyncio.gather(*(tokenizer.encode_prompts(texts, flag) for texts, flag in requests))
    for (texts, flag), ids in zip(requests, results):
        assert ids == [tokenizer.backend.encode(text, add_special_tokens=flag).ids for text in texts]


async def test_a_text_the_tokenizer_refuses_fails_only_its_own_request(tokenizer):
    """A lone surrogate cannot cross into the Rust tokenizer (JSON bodies never carry one)."""
    good = tokenizer.encode_prompts(["hello there"])
    bad = tokenizer.encode_prompts(["a\ud800b"])
    also_good = tokenizer.encode_prompts(["more", "text"], add_special_tokens=False)
    results = await asyncio.gather(good, bad, also_good, return_exceptions=True)
    assert results[0] == [tokenizer.encode("hello there")]
    assert isinstance(results[1], Exception)
    assert results[2] == [tokenizer.backend.encode(t, add_special_tokens=False).ids for t in ("more", "text")]


async def test_a_request_that_leaves_while_its_prompt_is_encoded_does_not_stop_the_others(tokenizer):
    leaving = asyncio.ensure_future(tokenizer.encode_prompts(["x " * 2000]))
    staying = asyncio.ensure_future(tokenizer.encode_prompts(["y " * 2000]))
    await asyncio.sleep(0)  # both are in the batch now
    leaving.cancel()
    assert await staying == [tokenizer.encode("y " * 2000)]
    assert await tokenizer.encode_prompts(["after"]) == [tokenizer.encode("after")]
