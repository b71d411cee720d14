"""The incremental detokenizer on a small byte-level BPE tokenizer built here, counting the work it
does through a counting wrapper around the tokenizer (ids decoded), never the time."""
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

from frontend.text.detokenizer import MAX_UNREAD, Detokenizer

SPECIAL = "<|end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    alphabet = ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    merges = [("Ġ", "h"), ("Ġh", "i")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([SPECIAL])
    return tokenizer


class CountingTokenizer:
    """Passes decode() through, adding up how many ids it was asked to decode."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.decoded_ids = 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded_ids += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def get_added_tokens_decoder(self):
        return self.tokenizer.get_added_tokens_decoder()


def pieces(detokenizer: Detokenizer, ids: list[int], rng: random.Random) -> str:
    text, i = "", 0
    while i < len(ids):
        step = rng.randrange(1, 4)
        text += detokenizer.add(ids[i : i + step])
        i += step
    return text + detokenizer.flush()


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("seed", range(30))
def test_pieces_concatenate_to_the_decode_of_valid_text(tokenizer, seed, skip_special_tokens):
    rng = random.Random(seed)
    words = ["hi", " hi", "华", "é", "🙂", "\n", " ", "ab", SPECIAL]
    ids = tokenizer.encode("".join(rng.choices(words, k=rng.randrange(1, 60)))).ids
    detokenizer = Detokenizer(tokenizer, skip_special_tokens)
    assert pieces(detokenizer, ids, rng) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_a_character_split_over_tokens_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("🙂").ids
    assert len(ids) == 4
    detokenizer = Detokenizer(tokenizer)
    assert [detokenizer.add([i]) for i in ids] == ["", "", "", "🙂"]


@pytest.mark.parametrize("name", ["continuation bytes", "special tokens", "lead bytes"])
def test_work_stays_linear_in_the_output_on_adversarial_ids(tokenizer, name):
    """Ids whose text never completes (or is empty) must not make each step decode from the start."""
    count = 5_000
    token = {"continuation bytes": tokenizer.encode("华").ids[1], "special tokens": tokenizer.token_to_id(SPECIAL),
             "lead bytes": tokenizer.encode("华").ids[0]}[name]
    counting = CountingTokenizer(tokenizer)
    detokenizer = Detokenizer(counting)
    text = "".join(detokenizer.add([token]) for _ in range(count)) + detokenizer.flush()
    # A window of at most MAX_UNREAD ids after a prefix as long, decoded a few times per MAX_UNREAD tokens;
    # a rescan from the start would be about count / 2 ids per token.
    assert counting.decoded_ids <= 3 * MAX_UNREAD * count
    expected = "" if name == "special tokens" else "\ufffd" * count
    assert text == expected


@pytest.mark.parametrize("seed", range(100))
def test_pieces_concatenate_to_the_decode_of_random_bytes(tokenizer, seed):
    """Random bytes are mostly not UTF-8: replacement characters must fall as in one decode of all."""
    rng = random.Random(seed)
    ids = [rng.randrange(256) for _ in range(rng.randrange(1, 120))]
    assert pieces(Detokenizer(tokenizer), ids, rng) == tokenizer.decode(ids)
