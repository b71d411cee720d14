"""A structured-output grammar that resumes where a moved request left off.

vLLM compiles a request's grammar (JSON schema, regex, tool call) when its engine core takes the
request, and advances the grammar's matcher only through the tokens it samples. A request moved from
a lost engine arrives as a new request whose prompt ends with the tokens generated before the move;
its grammar would start over at the schema's first character. So the engine worker marks such a
request with the number of those tokens (in SamplingParams.extra_args, which vLLM carries to its
engine core untouched), and the engine core runs a scheduler that, before the request can be
scheduled, advances the freshly compiled grammar through them: the continuation is constrained
exactly as the undisturbed request would have been.

vLLM takes a scheduler by `scheduler_cls`; `scheduler` builds the class vLLM itself would have chosen
(its async scheduler under async scheduling) with this one step added. Grammar compilation runs on
vLLM's own thread pool, and so does the advance: it never holds up the engine's steps.
"""
import functools
import logging
from concurrent.futures import Future

log = logging.getLogger(__name__)

RESUMED_TOKENS = "resumed_output_tokens"  # the SamplingParams.extra_args key
SCHEDULER = f"{__name__}.scheduler"  # what engine_args' scheduler_cls names


def mark(request_id: str, params, resumed_tokens: int) -> None:
    """Mark vLLM's SamplingParams of a moved request: its prompt's last `resumed_tokens` were generated."""
    if resumed_tokens and params.structured_outputs is not None:
        params.extra_args = {**(params.extra_args or {}), RESUMED_TOKENS: resumed_tokens}
        log.info("request %s: its grammar resumes after the %d tokens it generated elsewhere", request_id,
                 resumed_tokens)


def missing() -> str | None:
    """What the installed vLLM lacks that resuming grammars takes (None: nothing): the scheduler classes
    this one derives from, a scheduler_cls to pass it by, extra_args carried to the engine core, and the
    grammar's slot and methods, none of which vLLM promises to keep."""
    import dataclasses

    import vllm
    from vllm.config import SchedulerConfig
    from vllm.sampling_params import SamplingParams
    from vllm.v1.structured_output.backend_types import StructuredOutputGrammar
    from vllm.v1.structured_output.request import StructuredOutputRequest

    try:
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
    except ImportError as error:
        return f"vLLM {vllm.__version__} has no {error.name}"
    needs = {
        "Scheduler.add_request": hasattr(Scheduler, "add_request") and issubclass(AsyncScheduler, Scheduler),
        "SchedulerConfig.scheduler_cls": "scheduler_cls" in {f.name for f in dataclasses.fields(SchedulerConfig)},
        "SamplingParams.extra_args": "extra_args" in SamplingParams.__struct_fields__,
        "StructuredOutputRequest._grammar": "_grammar" in {f.name for f in dataclasses.fields(StructuredOutputRequest)},
        "StructuredOutputRequest.grammar's setter": getattr(StructuredOutputRequest, "grammar", None) is not None
        and StructuredOutputRequest.grammar.fset is not None,
        "StructuredOutputGrammar.accept_tokens and is_terminated": all(
            hasattr(StructuredOutputGrammar, name) for name in ("accept_tokens", "is_terminated")),
    }
    lacking = [name for name, present in needs.items() if not present]
    return f"vLLM {vllm.__version__} lacks {', '.join(lacking)}" if lacking else None


def scheduler(*, vllm_config, **kwargs):
    """vLLM's scheduler for this engine, resuming the grammars of moved requests."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    base = AsyncScheduler if vllm_config.scheduler_config.async_scheduling else Scheduler
    return resuming(base)(vllm_config=vllm_config, **kwargs)


@functools.cache
def resuming(base: type) -> type:
    class ResumingScheduler(base):
        def add_request(self, request) -> None:
            resume_grammar(request)
            super().add_request(request)

    ResumingScheduler.__name__ = ResumingScheduler.__qualname__ = f"Resuming{base.__name__}"
    return ResumingScheduler


def resume_grammar(request) -> None:
    """Have the request's grammar, once compiled, take the generated tokens its prompt ends with."""
    extra = request.sampling_params.extra_args if request.sampling_params is not None else None
    count = (extra or {}).get(RESUMED_TOKENS, 0)
    structured = request.structured_output_request
    if not count or structured is None:
        return
    tokens = request.prompt_token_ids[-count:]
    # What vLLM's grammar_init left there: a compilation under way (a Future), or its result. vLLM reads
    # it only through a property that resolves it, so it is taken from the field.
    compiled = structured._grammar
    resumed: Future = Future()
    if isinstance(compiled, Future):
        compiled.add_done_callback(lambda done: settle(resumed, done, request.request_id, tokens))
    else:
        done: Future = Future()
        done.set_result(compiled)
        settle(resumed, done, request.request_id, tokens)
    # The scheduler sees the grammar only once it has taken the tokens, or its error: then vLLM ends
    # the request as it ends one whose grammar could not be compiled.
    structured.grammar = resumed


def settle(resumed: Future, compiled: Future, request_id: str, tokens: list[int]) -> None:
    try:
        grammar = compiled.result()
        if isinstance(grammar, Exception):
            raise grammar
        for token in tokens:
            # Past its end (EOS under ignore_eos) a grammar constrains nothing more, as in the
            # undisturbed request; vLLM versions differ in what feeding it more tokens does.
            if grammar.is_terminated():
                break
            if not grammar.accept_tokens(request_id, [token]):
                raise ValueError("the tokens generated before the request moved do not fit its grammar")
    except Exception as error:
        resumed.set_exception(error)
        return
    resumed.set_result(grammar)
