"""engine_worker/resumed_grammar.py on vLLM's own xgrammar grammar and StructuredOutputRequest, compiled
for the embedded model's tokenizer: a moved request's grammar takes the tokens generated before the
move, and one whose tokens do not fit it ends with an error. The request around them is a stand-in
(named as such) for vLLM's Request, which only the engine core builds."""
import json
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import xgrammar as xgr
from vllm.sampling_params import SamplingParams, StructuredOutputsParams
from vllm.v1.structured_output.backend_xgrammar import XgrammarGrammar
from vllm.v1.structured_output.request import StructuredOutputRequest

from engine_worker import resumed_grammar

SCHEMA = {"type": "object", "properties": {"words": {"type": "array", "items": {"enum": ["alpha", "beta"]}}},
          "required": ["words"], "additionalProperties": False}


@pytest.fixture(scope="module")
def compiled(tokenizer):
    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=len(tokenizer.hf))
    return xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                       separators=(",", ":")), len(tokenizer.hf)


def stand_in_request(compiled, prompt: list[int], resumed: int, pending: bool):
    """What the scheduler's add_request sees: vLLM's grammar_init left a compilation (a Future, still
    running when `pending`) in the request's StructuredOutputRequest."""
    ctx, vocab_size = compiled
    params = SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA))
    resumed_grammar.mark("r1", params, resumed)
    grammar = XgrammarGrammar(vocab_size=vocab_size, matcher=xgr.GrammarMatcher(ctx), ctx=ctx)
    compilation: Future = Future()
    if not pending:
        compilation.set_result(grammar)
    structured = StructuredOutputRequest(params=params.structured_outputs, _grammar=compilation)
    request = SimpleNamespace(request_id="r1", sampling_params=params, prompt_token_ids=prompt,
                              structured_output_request=structured)
    return request, compilation, grammar


@pytest.mark.parametrize("pending", [False, True], ids=["compiled", "compiling"])
def test_a_moved_requests_grammar_goes_on_after_its_generated_tokens(tokenizer, compiled, pending):
    generated = tokenizer.hf.encode('{"words":["alpha","be', add_special_tokens=False)
    request, compilation, grammar = stand_in_request(compiled, [5, 6, 7] + generated, len(generated), pending)
    resumed_grammar.resume_grammar(request)
    structured = request.structured_output_request
    if pending:
        assert not structured.is_grammar_ready  # the scheduler waits for it, as for any compilation
        compilation.set_result(grammar)
    assert structured.grammar is grammar and not grammar.is_terminated()
    # It stands where the undisturbed request's grammar would: "ta" then the end fit, "alpha" does not.
    assert grammar.validate_tokens(tokenizer.hf.encode('ta"]}', add_special_tokens=False))
    assert not grammar.validate_tokens(tokenizer.hf.encode('{"words"', add_special_tokens=False))


def test_tokens_that_do_not_fit_the_grammar_end_the_request_with_an_error(tokenizer, compiled):
    generated = tokenizer.hf.encode('{"colour":', add_special_tokens=False)
    request, _, _ = stand_in_request(compiled, [5] + generated, len(generated), pending=False)
    resumed_grammar.resume_grammar(request)
    assert isinstance(request.structured_output_request.grammar, ValueError)


def test_a_request_that_did_not_move_keeps_its_grammar_as_compiled(compiled):
    request, compilation, _ = stand_in_request(compiled, [5, 6], 0, pending=False)
    resumed_grammar.resume_grammar(request)
    assert request.structured_output_request._grammar is compilation
    assert request.sampling_params.extra_args is None


def test_the_installed_vllm_has_what_resuming_takes():
    assert resumed_grammar.missing() is None


def test_an_engine_without_what_resuming_takes_runs_vllms_own_scheduler_and_says_so(monkeypatch, caplog):
    from vllm.v1.structured_output.backend_types import StructuredOutputGrammar

    from common.config import InferenceConfig
    from engine_worker.__main__ import resumes_grammars

    assert resumes_grammars(InferenceConfig())
    assert not resumes_grammars(InferenceConfig(resume_grammars=False))
    assert not resumes_grammars(InferenceConfig(engine_args={"scheduler_cls": "my.Scheduler"}))
    # A vLLM whose grammars have no is_terminated (this one's, with the method taken away for the test)
    monkeypatch.delattr(StructuredOutputGrammar, "is_terminated")
    with caplog.at_level("WARNING", logger="engine_worker"):
        assert not resumes_grammars(InferenceConfig())
    assert "lacks StructuredOutputGrammar.accept_tokens and is_terminated: vLLM's own scheduler" in caplog.text
