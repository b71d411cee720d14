"""The engine's token logprobs (sampled token first, then the top alternatives) in OpenAI's two
shapes: completions' parallel lists, and chat's list of tokens with their top alternatives."""
from common.messages import TokenLogprob
from frontend.openai.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from frontend.text.tokenizer import Tokenizer


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


class CompletionLogprobsBuilder:
    """Grows one choice's completions logprobs piece by piece; text offsets run on from `offset`."""

    def __init__(self, tokenizer: Tokenizer, offset: int = 0):
        self.tokenizer = tokenizer
        self.offset = offset

    def build(self, positions: list[list[TokenLogprob] | None], token_ids: list[int]) -> CompletionLogprobs:
        logprobs = CompletionLogprobs([], [], [], [])
        for token_id, position in zip(token_ids, positions):
            text = token_text(self.tokenizer, token_id)
            logprobs.tokens.append(text)
            logprobs.text_offset.append(self.offset)
            self.offset += len(text)
            if position is None:  # the first prompt token has no logprob
                logprobs.token_logprobs.append(None)
                logprobs.top_logprobs.append(None)
                continue
            logprobs.token_logprobs.append(position[0].logprob)
            logprobs.top_logprobs.append({token_text(self.tokenizer, e.token_id): e.logprob for e in position})
        return logprobs


def extend_completion(into: CompletionLogprobs | None, more: CompletionLogprobs) -> CompletionLogprobs:
    if into is None:
        return more
    for name in into.__struct_fields__:
        getattr(into, name).extend(getattr(more, name))
    return into


def chat_logprobs(tokenizer: Tokenizer, positions: list[list[TokenLogprob]], top: int) -> ChatLogprobs:
    content = []
    for position in positions:
        sampled = position[0]
        ranked = sorted(position, key=lambda entry: entry.rank if entry.rank is not None else 1 << 30)[:top]
        text = token_text(tokenizer, sampled.token_id)
        content.append(ChatTokenLogprob(text, sampled.logprob, utf8(text), [top_entry(tokenizer, e) for e in ranked]))
    return ChatLogprobs(content)


def top_entry(tokenizer: Tokenizer, entry: TokenLogprob) -> TopLogprob:
    text = token_text(tokenizer, entry.token_id)
    return TopLogprob(text, entry.logprob, utf8(text))


def utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))
