"""What a pooling request's inputs become: each input's token ids, bounded before any engine request is
built (docs/limits.md): inputs per request, tokens per input (the model's context, unless the request
truncates) and tokens in all. Texts are encoded, and lists of ids checked, off the event loop."""
from typing import Annotated, Literal

from msgspec import Meta

from common.config import RequestLimits
from frontend.http import HTTPError, off_the_loop_if
from frontend.request_bounds import check_count, check_token_ids
from frontend.run.pool import Pool

TokenId = Annotated[int, Meta(ge=0)]
# One input or several: a text, texts, token ids, or lists of token ids (OpenAI's `input`); a JSON
# decoder takes one kind of list only, so as_inputs checks that the list holds one kind.
Inputs = str | list[str | TokenId | list[TokenId]]
# vLLM's truncate_prompt_tokens: keep this many tokens of each input; -1: as many as the context holds.
TruncatePromptTokens = Annotated[int, Meta(ge=-1)]
TruncationSide = Literal["left", "right"]
# Checking ids on the event loop costs less than the hop to a thread up to about this many.
INLINE_IDS = 4096


def as_inputs(inputs: Inputs, field: str) -> list[str | list[int]]:
    """`inputs` as a list with one entry per input."""
    if isinstance(inputs, str):
        return [inputs]
    if not inputs:
        raise HTTPError(400, f"{field} must hold at least one input", field)
    kinds = {type(item) for item in inputs}
    if kinds == {int}:
        return [inputs]
    if len(kinds) > 1:
        raise HTTPError(400, f"{field} must be a text, a list of texts, a list of token ids or a list of lists of "
                             "token ids, not a mix", field)
    return list(inputs)


async def input_ids(pool: Pool, inputs: list[str | list[int]], limits: RequestLimits, field: str,
                    add_special_tokens: bool = True, truncate: int | None = None,
                    side: TruncationSide | None = None) -> list[list[int]]:
    """Each input's token ids, truncated as asked, every bound checked."""
    check_count(inputs, limits.max_pooling_inputs, field, "inputs")
    tokenizer = pool.tokenizer
    context = pool.max_model_len
    if truncate is not None and truncate > context:
        raise HTTPError(400, f"truncate_prompt_tokens ({truncate}) is more than the model's context of {context} "
                             "tokens", "truncate_prompt_tokens")
    texts = [item for item in inputs if isinstance(item, str)]
    encoded = iter(await tokenizer.encode_prompts(texts, add_special_tokens) if texts else [])
    given = [item for item in inputs if not isinstance(item, str)]
    await off_the_loop_if(sum(map(len, given)) > INLINE_IDS, check_all_ids, given, tokenizer.vocab_size, field)
    ids = [next(encoded) if isinstance(item, str) else item for item in inputs]
    keep = context if truncate == -1 else truncate
    if keep is not None:
        left = (side or tokenizer.hf.truncation_side) == "left"
        ids = [each if len(each) <= keep else each[len(each) - keep:] if left else each[:keep] for each in ids]
    check_lengths(ids, context, limits.max_pooling_tokens, field)
    return ids


def check_all_ids(id_lists: list[list[int]], vocab_size: int, field: str) -> None:
    for ids in id_lists:
        check_token_ids(ids, vocab_size, field)


def check_lengths(ids: list[list[int]], context: int, max_total: int, field: str) -> None:
    for index, each in enumerate(ids):
        if not each:
            raise HTTPError(400, f"{field}[{index}] is empty", field)
        if len(each) > context:
            raise HTTPError(400, f"{field}[{index}] is {len(each)} tokens, more than the model's context of {context} "
                                 "tokens (truncate_prompt_tokens cuts it)", field)
    total = sum(map(len, ids))
    if total > max_total:
        raise HTTPError(400, f"{field} holds {total} tokens in all, more than the limit of {max_total}", field)
