"""The step loop: apply what arrived, run one engine step, hand the outputs to the publisher.

Who aborts and who cleans up:

| case                                   | who aborts the engine request        | who cleans up what                         |
|----------------------------------------|--------------------------------------|--------------------------------------------|
| request finishes (eos, length, stop id)| nobody (vLLM frees it)               | loop drops its owner entry on finish       |
| stop string matched                    | frontend sends ABORT                 | frontend ends the HTTP response            |
| client disconnects                     | frontend sends ABORT                 | frontend drops the request's queue         |
| engine refuses the request             | nobody (never added)                 | loop sends a Delta with an error           |
| frontend says HELLO again (restart,    | loop aborts every request it owned   | frontend failed them before re-handshaking |
|   or it saw a gap in its numbering)    |                                      |                                            |
| engine killed or restarted             | (the engine is gone)                 | frontend fails its in-flight requests when |
|                                        |                                      |   heartbeats stop or the engine id changes |
| engine SIGTERM                         | loop aborts every request            | loop sends error Deltas, then Goodbye      |
ABORT is idempotent: an unknown or finished id is ignored.
"""
import logging
import queue
from collections import defaultdict

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from common.messages import Abort, Add, Delta, Hello, StepOutput, TokenLogprob, Welcome

log = logging.getLogger(__name__)


class StepLoop:
    def __init__(self, engine, engine_id: str, model: str, tokenizer: str, publisher, load, idle_wait_s: float):
        self.engine = engine
        self.engine_id = engine_id
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = engine.model_config.max_model_len
        self.publisher = publisher
        self.load = load
        self.idle_wait_s = idle_wait_s
        self.inbox: queue.Queue = queue.Queue()
        self.owners: dict[str, str] = {}  # request id -> frontend id
        self.stopping = False
        self.handlers = {Abort: self.abort, Hello: self.hello}

    def run(self) -> None:
        while not self.stopping:
            self.take_requests(block=not self.owners)
            if self.owners:
                self.step()
            else:
                self.load.record_idle()
        self.abort_all("the engine is shutting down")

    def take_requests(self, block: bool) -> None:
        try:
            received_at, message = self.inbox.get(timeout=self.idle_wait_s) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self.handle(received_at, message)
            try:
                received_at, message = self.inbox.get_nowait()
            except queue.Empty:
                return

    def handle(self, received_at: float, message) -> None:
        """One message from the inbox; only an ADD needs the time it arrived."""
        if type(message) is Add:
            self.add(message, received_at)
        else:
            self.handlers[type(message)](message)

    def add(self, message: Add, received_at: float) -> None:
        request_id = message.request_id
        try:
            if request_id in self.owners:
                raise ValueError(f"request id {request_id!r} is already running")
            params = sampling_params(message.sampling)
            # Arrival is when the ADD reached this process, so vLLM's own TTFT and e2e figures
            # (vllm:* in /metrics) include the wait in the inbox, as vllm serve's include its queue.
            self.engine.add_request(
                request_id, {"prompt_token_ids": message.prompt_token_ids}, params, arrival_time=received_at
            )
        except Exception as error:  # vLLM's own validation: the request is refused, nothing else
            log.info("refused request %s: %s", request_id, error)
            self.send(message.frontend_id, [Delta(request_id, [], "error", error=str(error))])
            return
        self.owners[request_id] = message.frontend_id
        self.load.load.prompt_tokens_total += len(message.prompt_token_ids)

    def abort(self, message: Abort) -> None:
        known = [request_id for request_id in message.request_ids if self.owners.pop(request_id, None)]
        if known:
            self.engine.abort_request(known)

    def hello(self, message: Hello) -> None:
        owned = [r for r, frontend in self.owners.items() if frontend == message.frontend_id]
        self.abort(Abort(owned))
        log.info("frontend %s joined (%d earlier requests of it aborted)", message.frontend_id, len(owned))
        self.publisher.send(
            message.frontend_id, Welcome(self.engine_id, message.frontend_id, self.model, self.tokenizer, self.max_model_len)
        )

    def step(self) -> None:
        by_frontend = defaultdict(list)
        generated = 0
        for output in self.engine.step():
            frontend_id = self.owners.get(output.request_id)
            if frontend_id is None:  # aborted while in the step
                continue
            completion = output.outputs[0]
            finish_reason = completion.finish_reason if output.finished else None
            if output.finished:
                del self.owners[output.request_id]
            token_ids = list(completion.token_ids)
            generated += len(token_ids)
            by_frontend[frontend_id].append(
                Delta(
                    output.request_id,
                    token_ids,
                    finish_reason,
                    logprobs=convert_logprobs(token_ids, completion.logprobs),
                    prompt_logprobs=prompt_logprobs(output),
                )
            )
        self.load.load.generation_tokens_total += generated
        for frontend_id, deltas in by_frontend.items():
            self.send(frontend_id, deltas)

    def send(self, frontend_id: str, deltas: list[Delta]) -> None:
        self.publisher.send(frontend_id, StepOutput(self.engine_id, 0, deltas))

    def abort_all(self, reason: str) -> None:
        by_frontend = defaultdict(list)
        for request_id, frontend_id in self.owners.items():
            by_frontend[frontend_id].append(Delta(request_id, [], "abort", error=reason))
        if self.owners:
            try:
                self.engine.abort_request(list(self.owners))
            except Exception as error:  # its core may already be gone with the same signal
                log.warning("could not abort in the engine: %s", error)
        self.owners.clear()
        for frontend_id, deltas in by_frontend.items():
            self.send(frontend_id, deltas)


def sampling_params(sampling: dict) -> SamplingParams:
    """vLLM's SamplingParams from the frontend's keyword arguments. A structured-outputs spec
    crosses the wire as a plain dict (json, regex, choice, grammar or json_object) and becomes
    vLLM's object here."""
    kwargs = dict(sampling)
    if (structured := kwargs.pop("structured_outputs", None)) is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
    return SamplingParams(**kwargs, detokenize=False, output_kind=RequestOutputKind.DELTA)


def convert_logprobs(token_ids: list[int], logprobs) -> list[list[TokenLogprob]] | None:
    """vLLM's per-position {token id: Logprob} into lists with the sampled token first."""
    if logprobs is None:
        return None
    return [_position(sampled, position) for sampled, position in zip(token_ids, logprobs)]


def prompt_logprobs(output) -> list[list[TokenLogprob] | None] | None:
    positions = getattr(output, "prompt_logprobs", None)
    if not positions:
        return None
    prompt_ids = output.prompt_token_ids or []
    return [None if p is None else _position(t, p) for t, p in zip(prompt_ids, positions)]


def _position(sampled: int, position: dict) -> list[TokenLogprob]:
    ordered = sorted(position.items(), key=lambda item: item[0] != sampled)
    return [TokenLogprob(token_id, entry.logprob, entry.rank) for token_id, entry in ordered]
