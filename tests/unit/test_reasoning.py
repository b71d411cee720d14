"""The reasoning parsers on text cut at every place, against a reading of the whole text at once."""
import random

import pytest

from frontend.text.reasoning import Content, Reasoning, make_reasoning_parser


def stream(name: str, pieces: list[str]) -> tuple[str, str, list]:
    parser = make_reasoning_parser(name)
    events = [event for piece in pieces for event in parser.feed(piece)] + parser.finish()
    reasoning = "".join(event.text for event in events if isinstance(event, Reasoning))
    content = "".join(event.text for event in events if isinstance(event, Content))
    return reasoning, content, events


def whole(name: str, text: str) -> tuple[str, str]:
    """What the split of the finished text is: one block of thinking, its inner `<think>`s dropped."""
    before = ""
    if name == "qwen3":
        before, opened, text = text.partition("<think>")
        if not opened:
            return "", before
    thinking, _, after = text.partition("</think>")
    return thinking.replace("<think>", ""), before + after


def test_deepseek_r1_starts_inside_the_thinking_without_an_opening_tag():
    assert stream("deepseek_r1", ["I should add.", "</think>", "4"])[:2] == ("I should add.", "4")
    assert stream("deepseek_r1", ["<think>plan</think>answer"])[:2] == ("plan", "answer")
    # Never closed: everything was thinking.
    assert stream("deepseek_r1", ["still thinking"])[:2] == ("still thinking", "")


def test_qwen3_reasons_only_between_explicit_tags():
    assert stream("qwen3", ["no thinking here"])[:2] == ("", "no thinking here")
    assert stream("qwen3", ["<think>\nplan\n</think>\n\nanswer"])[:2] == ("\nplan\n", "\n\nanswer")
    assert stream("qwen3", ["a stray </think> is text"])[:2] == ("", "a stray </think> is text")


def test_markers_split_across_pieces_are_found():
    pieces = ["<", "th", "ink>pl", "an</", "thi", "nk", ">ans", "wer"]
    reasoning, content, _ = stream("qwen3", pieces)
    assert (reasoning, content) == ("plan", "answer")


def test_text_is_held_back_only_while_it_may_start_a_marker():
    parser = make_reasoning_parser("qwen3")
    assert parser.feed("hello <th") == [Content("hello ")]
    assert parser.feed("e end") == [Content("<the end")]
    parser = make_reasoning_parser("deepseek_r1")
    assert parser.feed("x</thin") == [Reasoning("x")]
    assert parser.finish() == [Reasoning("</thin")]


def test_after_the_thinking_markers_are_plain_text():
    assert stream("deepseek_r1", ["a</think>b<think>c</think>d"])[:2] == ("a", "b<think>c</think>d")


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
def test_a_marker_that_ends_the_prompt_says_where_the_output_starts(name):
    opened = make_reasoning_parser(name, prompt_end="<|im_start|>assistant\n<think>\n")
    assert opened.feed("plan</think>answer") == [Reasoning("plan"), Content("answer")]
    closed = make_reasoning_parser(name, prompt_end="assistant\n<think>\n\n</think>\n\n")
    assert closed.feed("answer</think>") + closed.finish() == [Content("answer</think>")]
    # A marker earlier in the prompt is history, not where the output starts.
    default = make_reasoning_parser(name, prompt_end="</think>earlier answer<|im_end|>\nassistant\n")
    assert default.feed("text") + default.finish() == [(Reasoning if name == "deepseek_r1" else Content)("text")]


def test_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="deepseek_r1"):
        make_reasoning_parser("nonesuch")


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
@pytest.mark.parametrize("seed", range(300))
def test_any_cut_reads_as_the_whole_text(name, seed):
    rng = random.Random(seed)
    text = "".join(rng.choices(["<think>", "</think>", "<", "</", "th", "ink>", "a", "b ", ">"], k=rng.randrange(12)))
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 8))))
    pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]
    reasoning, content, events = stream(name, pieces)
    assert (reasoning, content) == whole(name, text)
    assert all(event.text for event in events)


def test_every_parser_server_yml_accepts_exists():
    from typing import get_args

    from common.config import ServerConfig
    accepted = set(get_args(ServerConfig.__annotations__["reasoning_parser"])) - {""}
    for name in accepted:
        assert make_reasoning_parser(name)


def test_grammars_from_the_first_token_are_not_read_for_thinking():
    from frontend.text.tools import FunctionTool, ToolPlan

    tools = [FunctionTool("f", None, {"type": "object"})]
    assert ToolPlan(tools, "required", True, None, "hermes", 8).reasoning_parser("deepseek_r1") is None
    assert ToolPlan(tools, "f", True, None, "hermes", 8).reasoning_parser("deepseek_r1") is None
    assert ToolPlan([], "none", True, {"json_object": True}, "hermes", 8).reasoning_parser("deepseek_r1") is None
    assert ToolPlan([], "none", True, {"regex": "a"}, "hermes", 8).reasoning_parser("deepseek_r1") is not None
    assert ToolPlan(tools, "auto", True, None, "hermes", 8).reasoning_parser("qwen3") is not None
    assert ToolPlan(tools, "auto", True, None, "hermes", 8).reasoning_parser("") is None


def test_a_choice_reads_tool_calls_in_the_answer_after_the_thinking():
    from frontend.run.choices import Choice
    from frontend.run.generation import Piece
    from frontend.text.tool_parsers import make_parser

    choice = Choice(0, make_parser("hermes"), make_reasoning_parser("deepseek_r1"))
    updates = [choice.take(Piece(text, [1])) for text in ["Weather? <tool_call> is what I ", "need.</th", "ink>Let me"]]
    last = choice.take(Piece(' look.<tool_call>{"name": "f", "arguments": {}}</tool_call>', [2], "stop", stop_reason=7))
    assert updates[0].events == [Reasoning("Weather? <tool_call> is what I ")]
    assert (choice.reasoning, choice.content) == ("Weather? <tool_call> is what I need.", "Let me look.")
    assert [(call.name, call.arguments) for call in choice.tool_calls] == [("f", "{}")]
    assert (last.stop_reason, choice.stop_reason, choice.finish_reason) == (7, 7, "stop")
