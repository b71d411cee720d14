"""The engine worker gives vLLM the configuration `vllm serve` gives it for the same engine arguments
(the flags bench/side_by_side.py passes to `vllm serve`), so a comparison of the two servers compares
how each drives one and the same engine. No engine starts: vLLM only builds its configuration.

One difference is ours on purpose: the scheduler class, vLLM's own with the step that resumes a moved
request's grammar (engine_worker/resumed_grammar.py); everything else about the scheduler, async
scheduling included, must match. With `resume_grammars: false` there is no difference at all."""
import dataclasses

import pytest

from bench.services import engine_flags
from common.config import InferenceConfig
from engine_worker import resumed_grammar
from engine_worker.__main__ import engine_args, resumes_grammars, usage_context

CASES = {
    "batch sizes given": {"max_model_len": 4096, "max_num_seqs": 32, "max_num_batched_tokens": 1024,
                          "enforce_eager": True},
    # vLLM picks max_num_seqs and max_num_batched_tokens by what it is told it serves.
    "batch sizes left to vLLM": {"max_model_len": 4096},
}


def serve_args(model: str, given: dict, name: str):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    except ImportError:  # moved in later vLLM
        from vllm.entrypoints.launchers.cli_args import make_arg_parser

    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(
        [model, "--served-model-name", name, *engine_flags(given)])
    parsed.model = parsed.model_tag  # as `vllm serve`'s command does
    return AsyncEngineArgs.from_cli_args(parsed)


def differences(ours, theirs) -> list[str]:
    found = []
    for field in dataclasses.fields(ours):
        if field.name == "instance_id":  # random per engine
            continue
        mine, other = getattr(ours, field.name), getattr(theirs, field.name)
        if str(mine) != str(other):
            found.append(f"{field.name}: ours {str(mine)[:300]} | vllm serve {str(other)[:300]}")
    return found


@pytest.mark.parametrize("resume", [True, False], ids=["resume_grammars", "vllm's own scheduler"])
@pytest.mark.parametrize("given", CASES.values(), ids=CASES.keys())
def test_engine_config_is_vllm_serves(given, resume, model_dir):
    from vllm.usage.usage_lib import UsageContext

    inference = InferenceConfig(model=str(model_dir), engine_args=given, resume_grammars=resume)
    assert resumes_grammars(inference) == resume  # the installed vLLM has what resuming takes
    ours = engine_args(str(model_dir), inference, resume_grammars=resumes_grammars(inference)).create_engine_config(
        usage_context())
    theirs = serve_args(str(model_dir), given, inference.served_name).create_engine_config(
        UsageContext.OPENAI_API_SERVER)
    if resume:
        assert ours.scheduler_config.scheduler_cls == resumed_grammar.SCHEDULER
        theirs.scheduler_config.scheduler_cls = resumed_grammar.SCHEDULER
    assert differences(ours, theirs) == []
