"""Bounds on what one request may ask for, checked before anything is built for it.

Each check raises a 400 that names the field. Two kinds of bound:
- what the wire and vLLM can carry: seeds are int64 (vLLM's own server caps them there, and choice i
  of n gets seed + i), token ids lie inside the vocabulary, counts fit vLLM's int32;
- how much work a client may ask of a frontend or the engine: the limits in server.yml
  (`limits:`, common.config.RequestLimits).
"""
import re
from collections.abc import Iterable
from typing import Any

from common.config import RequestLimits
from frontend.http import HTTPError

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_seed(seed: int | None, n: int = 1) -> None:
    if seed is None:
        return
    if seed < INT64_MIN or seed + n - 1 > INT64_MAX:
        choices = f" (choice i of n={n} uses seed + i)" if n > 1 else ""
        raise HTTPError(400, f"seed must lie in [-2**63, 2**63 - {n}]{choices}", "seed")


def check_token_ids(ids: Iterable[int], vocab_size: int, field: str) -> None:
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise HTTPError(400, f"{field} holds {token_id}, not a token id of this model (0 to {vocab_size - 1})",
                            field)


def check_logit_bias(logit_bias: dict, vocab_size: int, limits: RequestLimits) -> None:
    """Its keys are token ids (as strings in OpenAI's API) in the vocabulary, and not too many."""
    check_count(logit_bias, limits.max_logit_bias, "logit_bias")
    for key in logit_bias:
        if isinstance(key, str) and not re.fullmatch(r"-?[0-9]{1,20}", key):
            raise HTTPError(400, f"logit_bias keys must be token ids, not {key[:40]!r}", "logit_bias")
    check_token_ids(map(int, logit_bias), vocab_size, "logit_bias")


def check_count(items, limit: int, field: str, what: str = "entries") -> None:
    if items is not None and len(items) > limit:
        raise HTTPError(400, f"{field} has {len(items)} {what}, more than the limit of {limit}", field)


def check_stop_strings(stop: list[str], limits: RequestLimits) -> None:
    check_count(stop, limits.max_stop_strings, "stop", "strings")
    for text in stop:
        if len(text) > limits.max_stop_string_chars:
            raise HTTPError(400, f"a stop string is {len(text)} characters long, more than the limit of "
                                 f"{limits.max_stop_string_chars}", "stop")


def check_content_blocks(messages: Iterable[tuple[str, int]], limits: RequestLimits, field: str) -> None:
    """`messages` is each message's field name and how many content blocks (parts, tool calls, tool
    results and the blocks inside them) it holds: each is bounded, and so is their sum."""
    total = 0
    for name, count in messages:
        if count > limits.max_content_blocks_per_message:
            raise HTTPError(400, f"{name} holds {count} content blocks, more than the limit of "
                                 f"{limits.max_content_blocks_per_message}", name)
        total += count
    if total > limits.max_content_blocks:
        raise HTTPError(400, f"{field} hold {total} content blocks in all, more than the limit of "
                             f"{limits.max_content_blocks}", field)


def check_generations(prompts: int, n: int, limits: RequestLimits) -> None:
    """Before any generation is built: the engine requests this one HTTP request would become."""
    check_count(range(prompts), limits.max_prompts, "prompt", "prompts")
    if prompts * n > limits.max_generations:
        raise HTTPError(400, f"{prompts} prompt(s) x n={n} is {prompts * n} generations, more than the limit of "
                             f"{limits.max_generations}", "n")


def depth_of(value: Any, stop_past: int) -> int:
    """The JSON nesting depth of `value` (a scalar is 0), counted without recursion; the count
    stops once it passes `stop_past`, so a deep value costs no more than a shallow one."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_past:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_depth(value: Any, limit: int, field: str) -> None:
    if depth_of(value, limit) > limit:
        raise HTTPError(400, f"{field} nests deeper than the limit of {limit} levels", field)


def as_list(value: str | list | None) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check_sampling(body, limits: RequestLimits, vocab_size: int, n: int = 1) -> None:
    """The sampling fields /generate and the OpenAI routes share (`body` has them by these names)."""
    check_seed(body.seed, n)
    check_stop_strings(as_list(body.stop), limits)
    check_count(body.bad_words, limits.max_bad_words, "bad_words", "words")
    for field in ("stop_token_ids", "allowed_token_ids"):
        check_token_ids(getattr(body, field) or [], vocab_size, field)
    if body.logit_bias:
        check_logit_bias(body.logit_bias, vocab_size, limits)
