"""The served tokenizer's vocabulary as the simulated engine needs it: how many ids there are, which
one is EOS, and which are special. Read from the model directory's JSON files, without loading
transformers or the tokenizer itself, so that many simulated engines start cheaply."""
import json
from pathlib import Path
from typing import Any

import msgspec


class AddedToken(msgspec.Struct):
    id: int
    content: str
    special: bool = False


class TokenizerFile(msgspec.Struct):
    """The parts of a fast tokenizer's tokenizer.json read here."""

    added_tokens: list[AddedToken] = []
    model: dict[str, Any] = {}


class Vocabulary(msgspec.Struct, frozen=True):
    size: int  # ids 0 .. size-1
    eos_token_id: int  # what the tokenizer calls its EOS: the id the simulated model stops with
    stop_ids: frozenset[int]  # every EOS id of the model's configs (vLLM stops on each)
    special_ids: frozenset[int]  # special tokens: never drawn as ordinary output
    max_position_embeddings: int | None = None


def read_vocabulary(model_dir: Path) -> Vocabulary:
    config = read_json(model_dir / "config.json")
    if not (model_dir / "tokenizer.json").exists():
        raise ValueError(f"{model_dir} has no tokenizer.json: the simulated engine reads a fast tokenizer's vocabulary")
    tokenizer = msgspec.json.decode((model_dir / "tokenizer.json").read_bytes(), type=TokenizerFile)
    by_content = {token.content: token.id for token in tokenizer.added_tokens}
    vocab = tokenizer.model.get("vocab") or {}
    # BPE and WordPiece keep a dict of token -> id, Unigram a list of [piece, score] indexed by id.
    largest = max(vocab.values()) if isinstance(vocab, dict) and vocab else len(vocab) - 1
    size = max([largest, *by_content.values()]) + 1
    eos_name = read_json(model_dir / "tokenizer_config.json").get("eos_token")
    if isinstance(eos_name, dict):  # older files: an AddedToken's fields
        eos_name = eos_name.get("content")
    config_eos = ids_of(read_json(model_dir / "generation_config.json").get("eos_token_id")) + \
        ids_of(config.get("eos_token_id"))
    ids = {**(vocab if isinstance(vocab, dict) else {}), **by_content}
    eos = ids.get(eos_name, config_eos[0] if config_eos else None)
    if eos is None:
        raise ValueError(f"{model_dir}: neither the tokenizer nor the model's config names an EOS token")
    return Vocabulary(size, eos, frozenset([eos, *config_eos]),
                      frozenset(token.id for token in tokenizer.added_tokens if token.special),
                      config.get("max_position_embeddings"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def ids_of(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
