"""Reasoning parsers: split a model's streamed text into its thinking and its answer.

The `<think>…</think>` family, under vLLM's names. `deepseek_r1` starts inside the thinking (its
chat templates may put `<think>` in the prompt, so the output can begin without it): everything up
to `</think>` is reasoning. `qwen3` starts in the answer: only text between an explicit `<think>` and
`</think>` is reasoning. In both, one block of thinking is taken; after its `</think>` every byte is
answer, markers included, and a `<think>` inside the thinking is dropped. Where the prompt itself
ends with a marker (a template that opens the thinking for the model, or closes it to turn thinking
off), the output starts on that side of it, whatever the parser.

Text is held back only while its tail may still be the start of a marker, so a streamed client never
sees half a marker, and each character is looked at a bounded number of times.
"""
from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"
# How much of the end of a prompt is read for a marker a chat template left there.
PROMPT_TAIL_TOKENS = 16


@dataclass
class Content:
    text: str


@dataclass
class Reasoning:
    text: str


BEFORE, THINKING, AFTER = "before", "thinking", "after"
# What each phase looks for, and what its text is.
MARKERS = {BEFORE: (THINK_START,), THINKING: (THINK_START, THINK_END), AFTER: ()}
KIND = {BEFORE: Content, THINKING: Reasoning, AFTER: Content}


class ReasoningParser:
    def __init__(self, starts_thinking: bool):
        self.phase = THINKING if starts_thinking else BEFORE
        self.held = ""

    def feed(self, text: str) -> list[Content | Reasoning]:
        text, self.held = self.held + text, ""
        events: list[Content | Reasoning] = []
        while text:
            markers = MARKERS[self.phase]
            found = [(at, marker) for marker in markers if (at := text.find(marker)) >= 0]
            if not found:
                keep = held_length(text, markers)
                append(events, KIND[self.phase](text[: len(text) - keep]))
                self.held = text[len(text) - keep:]
                break
            at, marker = min(found)
            append(events, KIND[self.phase](text[:at]))
            text = text[at + len(marker):]
            if marker == THINK_END:
                self.phase = AFTER
            elif self.phase == BEFORE:
                self.phase = THINKING
        return events

    def finish(self) -> list[Content | Reasoning]:
        """What was held back, once the text has ended: it was no marker after all."""
        events: list[Content | Reasoning] = []
        append(events, KIND[self.phase](self.held))
        self.held = ""
        return events


def held_length(text: str, markers: tuple[str, ...]) -> int:
    """The longest tail of the text that is the start of a marker, not yet the whole of it."""
    longest = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:length]):
                longest = length
                break
    return longest


def append(events: list[Content | Reasoning], event: Content | Reasoning) -> None:
    if not event.text:
        return
    if events and type(events[-1]) is type(event):
        events[-1] = type(event)(events[-1].text + event.text)
    else:
        events.append(event)


# vLLM's names; the value says whether the output starts inside the thinking.
REASONING_PARSERS = {"deepseek_r1": True, "qwen3": False}


def make_reasoning_parser(name: str, prompt_end: str = "") -> ReasoningParser:
    """`prompt_end`: the end of the prompt's text, where a chat template may have written a marker."""
    if name not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {name!r}; known: {', '.join(REASONING_PARSERS)}")
    parser = ReasoningParser(starts_thinking=REASONING_PARSERS[name])
    tail = prompt_end.rstrip()
    if tail.endswith(THINK_START):
        parser.phase = THINKING
    elif tail.endswith(THINK_END):
        parser.phase = AFTER
    return parser


def prompt_tail(tokenizer, prompt_ids: list[int]) -> str:
    """The text of the prompt's last tokens, for make_reasoning_parser."""
    return tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
