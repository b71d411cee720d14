"""The step loop: apply what arrived, run one engine step (taking what arrives while it runs), publish
its outputs, and after each step that changed the engine's load, a LoadReport for every frontend's
router (at most one a step: it acknowledges every ADD taken since the last one, from whichever
frontend).

It only steps: each ADD reaches it already checked and turned into vLLM's request by admission, on
the request reader's thread (engine_worker/admission.py), so no request's validation holds up the
others' steps.

The engine's part when things fail; what a client sees, and the frontend's part, are in the one
failure table, docs/failures.md:

| case                                         | what the step loop does                                  |
|----------------------------------------------|----------------------------------------------------------|
| request finishes (eos, length, stop id)      | drops its owner entry (vLLM frees the request)           |
| ABORT (a stop string, a client gone, a       | aborts it in vLLM; an unknown or finished id is ignored  |
|   timeout, a drain that ran out, a request   |                                                          |
|   the frontend moved off a stalled engine)   |                                                          |
| engine refuses the request (admission or     | never adds it; sends its owner a Delta with the error    |
|   add_request)                               |                                                          |
| a frontend says HELLO again (it saw a gap),  | aborts every request it owned, and those of the earlier  |
|   or a new one in the slot of an earlier one |   frontend in its slot; sends each owner abort Deltas    |
|                                              |   before the Welcome                                     |
| a frontend silent for FORGET_AFTER_S, with   | forgets it and its output numbering; a later ADD from it |
|   no request                                 |   gets a Welcome first                                   |
| SIGTERM                                      | sends Goodbye (frontends move its requests to another    |
|                                              |   engine), then aborts every request with abort Deltas   |
| engine.step() raises (vLLM's core died)      | the same, its Goodbye saying it failed; then the process |
|                                              |   exits 1 and supervisord restarts it                    |
| an ADD moved here (Add.resumed_tokens)       | admission marks it so that its grammar resumes after the |
|                                              |   tokens generated elsewhere (resumed_grammar.py)        |
| an ADD of a priority class past its share of | holds it back, acknowledged, until one of the class's    |
|   max_num_seqs (priority_hold.py)            |   requests ends; an ABORT or HELLO drops it unseen by    |
|                                              |   vLLM, with the same abort Delta a running one gets     |
"""
import logging
import queue
import time
from collections import defaultdict
from typing import Any, NamedTuple

from common.messages import (
    Abort, Add, Delta, Goodbye, Hello, ListLoras, LoadLora, Loras, ResetPrefixCache, Resync, SetOffline, StepOutput,
    TokenLogprob, UnloadLora, Welcome, frontend_slot,
)
from common.tracing import log_fields
from engine_worker.doorbell import Doorbell, RingingQueue, ring_on_outputs
from engine_worker.images import image_token_id
from engine_worker.load import PrefillBacklog, TenantUsage
from engine_worker.lora import Adapters, LoraRefused
from engine_worker.priority_hold import PriorityHold

log = logging.getLogger(__name__)

# A frontend with no request that has sent nothing for this long is forgotten: ids change with
# every frontend start, so the table of them must not grow forever.
FORGET_AFTER_S = 600.0
# A frontend that lost a CachedBlocks gets at most one snapshot this often: a snapshot is the whole
# prefix cache, and a frontend too slow to keep up would otherwise ask again and again.
RESYNC_INTERVAL_S = 1.0
# vLLM ends a request with finish reason "error" on its own failures (a grammar that would not compile
# or resume), and says why only in its log.
ENDED_BY_ERROR = "the engine could not go on with this request (its log says why)"


class Admitted(NamedTuple):
    """An ADD that passed admission: `prompt` and `params` as engine.add_request takes them, and the
    prompt tokens not in the prefix cache when it was admitted (None: all of them)."""

    add: Add
    prompt: Any
    params: Any
    prefill_tokens: int | None = None


class Refused(NamedTuple):
    """An ADD that admission refused (vLLM's own validation), and why."""

    add: Add
    error: str


class StepLoop:
    def __init__(self, engine, engine_id: str, model: str, tokenizer: str, publisher, load, idle_wait_s: float,
                 adapters: Adapters | None = None, resumes_grammars: bool = False, tracing=None,
                 log_requests: bool = False, hold: PriorityHold | None = None, cache_emptied=None):
        self.engine = engine
        self.adapters = adapters or Adapters(engine)
        self.engine_id = engine_id
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = engine.model_config.max_model_len
        self.image_token_id = image_token_id(engine)  # said in each Welcome
        self.publisher = publisher
        self.load = load
        self.idle_wait_s = idle_wait_s
        self.resumes_grammars = resumes_grammars  # said in each Welcome
        self.model_facts = model_facts(engine)  # said in each Welcome too
        self.tracing = tracing  # engine_worker/tracing.py's EngineTracing, when server.yml's tracing is on
        self.log_requests = log_requests
        self.traces: dict[str, str] = {}  # request id -> its trace id, for its log line (log_requests)
        self.doorbell = Doorbell()
        self.inbox: queue.Queue = RingingQueue(self.doorbell)
        self.outputs_waiting = ring_on_outputs(engine, self.doorbell)  # None: engine.step() computes them
        self.owners: dict[str, str] = {}  # request id -> frontend id
        self.backlog = PrefillBacklog()  # the owned requests with no output token yet
        self.expanded: dict[str, int] = {}  # request id -> its prompt's length in vLLM, until its first Delta
        self.usage = TenantUsage()
        # Requests of a priority class past its share of the engine's slots, held back (priority_hold.py).
        self.hold = hold if hold is not None else PriorityHold(0, [])
        # Tells every frontend at once that the prefix cache is empty (cache_events.relay_emptied), when the
        # engine reports its cache.
        self.cache_emptied = cache_emptied
        self.tenant_of: dict[str, tuple[str, int]] = {}  # request id -> its tenant and prompt tokens
        self.frontends: dict[str, float] = {}  # frontend id -> when it last sent a HELLO or an ADD
        self.taken: dict[str, int] = {}  # frontend id -> ADDs taken from it since its last Welcome
        self.resynced: dict[str, float] = {}  # frontend id -> when it was last sent a snapshot for a Resync
        self.next_sweep = time.monotonic() + FORGET_AFTER_S
        self.stopping = False
        self.failure: str | None = None  # why the process must end with an error
        self.handlers = {Abort: self.abort, Hello: self.hello, Refused: self.refused, LoadLora: self.load_lora,
                         UnloadLora: self.unload_lora, Resync: self.resync, ListLoras: self.list_loras,
                         SetOffline: self.set_offline, ResetPrefixCache: self.reset_prefix_cache}

    def serve(self) -> int:
        """Run until stopped or failed, then say Goodbye and abort what still runs. Returns the process's
        exit status: 1 after a failure, so supervisord restarts the worker."""
        try:
            self.run()
        except Exception as error:
            log.exception("the engine failed")
            self.failure = f"the engine failed: {error}"
        # Goodbye first: a frontend that hears it moves its requests to another engine, so the aborts
        # after it reach only requests that cannot move.
        self.publisher.send(None, Goodbye(self.engine_id, failed=self.failure is not None))
        self.abort_all(self.failure or "the engine is shutting down")
        self.publisher.close()
        return 1 if self.failure else 0

    def fail(self, reason: str) -> None:
        """From another thread: something the worker cannot do without broke; stop, with an error."""
        log.error("%s: stopping", reason)
        self.failure = reason
        self.stopping = True

    def run(self) -> None:
        """Steps until `stopping`; an exception from the engine propagates."""
        while not self.stopping:
            self.take_requests(block=not self.owners and not self.hold)
            self.start_held()
            if self.owners:
                self.await_outputs()
            if self.owners:  # an ABORT taken while waiting may have ended the last
                self.step()
            else:
                self.load.record_idle()
            self.load.progressed()
            self.report_load()
            self.forget_idle_frontends()

    def await_outputs(self) -> None:
        """Take what arrives until the engine core's next outputs are in (engine_worker/doorbell.py)."""
        if self.outputs_waiting is None or getattr(self.engine, "should_execute_dummy_batch", False):
            return
        while not self.outputs_waiting() and self.owners and not self.stopping:
            if self.inbox.empty():
                self.doorbell.wait(self.idle_wait_s)
            self.take_requests(block=False)
            self.start_held()

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
        if type(message) is Admitted:
            self.add(message, received_at)
        else:
            self.handlers[type(message)](message)

    def add(self, admitted: Admitted, received_at: float) -> None:
        self.take(admitted.add.frontend_id)
        if self.hold.admits(received_at, admitted):
            self.start(admitted, received_at)

    def start_held(self) -> None:
        for held in self.hold.release():
            self.start(held.admitted, held.received_at)

    def start(self, admitted: Admitted, received_at: float) -> None:
        """Give the request to vLLM."""
        request_id, frontend_id = admitted.add.request_id, admitted.add.frontend_id
        try:
            if request_id in self.owners:
                raise ValueError(f"request id {request_id!r} is already running")
            if not self.adapters.serves(admitted.add.lora):  # unloaded since its admission
                raise ValueError(f"the LoRA adapter {admitted.add.lora!r} is not loaded on this engine")
            # Arrival is when the ADD reached this process, so vLLM's own TTFT and e2e figures
            # (vllm:* in /metrics) include the wait in the inbox, as vllm serve's include its queue.
            self.engine.add_request(request_id, admitted.prompt, admitted.params, arrival_time=received_at)
        except Exception as error:  # vLLM's own validation: the request is refused, nothing else
            self.refuse(Refused(admitted.add, str(error)))
            return
        self.owners[request_id] = frontend_id
        self.hold.start(admitted.add)
        if self.log_requests and admitted.add.trace is not None:
            self.traces[request_id] = admitted.add.trace.trace_id.hex()
        prompt_tokens = len(admitted.add.prompt_token_ids)
        if admitted.add.images:
            self.expanded[request_id] = len(getattr(admitted.prompt, "prompt_token_ids", None) or [])
        self.tenant_of[request_id] = (admitted.add.tenant, self.expanded.get(request_id) or prompt_tokens)
        self.usage.count(admitted.add.tenant, requests=0 if admitted.add.resumed_tokens else 1)
        self.backlog.add(request_id, prompt_tokens if admitted.prefill_tokens is None else admitted.prefill_tokens)
        self.load.load.prompt_tokens_total += prompt_tokens

    def take(self, frontend_id: str) -> None:
        """An ADD from `frontend_id` reached the loop: the next LoadReport acknowledges it."""
        self.heard_from(frontend_id)
        self.taken[frontend_id] = self.taken.get(frontend_id, 0) + 1

    def refused(self, refused: Refused) -> None:
        self.take(refused.add.frontend_id)
        self.refuse(refused)

    def refuse(self, refused: Refused) -> None:
        log.info("refused request %s: %s", refused.add.request_id, refused.error, extra=log_fields(refused.add))
        if self.tracing is not None:
            self.tracing.stopped([refused.add.request_id], "error", refused.error)
        self.heard_from(refused.add.frontend_id)
        self.send(refused.add.frontend_id, [Delta(refused.add.request_id, [], "error", error=refused.error)])

    def abort(self, message: Abort, reason: str = "its frontend aborted it") -> list[tuple[str, str]]:
        """Abort the requests named; returns (request id, owner) for those that were running or held
        (priority_hold.py: those vLLM never saw)."""
        known = [(r, owner) for r in message.request_ids if (owner := self.owners.pop(r, None)) is not None]
        for request_id, _ in known:
            self.hold.ended(request_id)
            self.backlog.done(request_id)
            self.expanded.pop(request_id, None)
            self.tenant_of.pop(request_id, None)
        if known:
            self.engine.abort_request([r for r, _ in known])
        known += [(add.request_id, add.frontend_id) for add in self.hold.drop(message.request_ids)]
        if known and self.tracing is not None:
            self.tracing.stopped([r for r, _ in known], "abort", reason)
        if self.log_requests:
            for request_id, _ in known:
                self.log_end(request_id, "abort")
        return known

    def load_lora(self, message: LoadLora) -> None:
        self.update_adapters(message, lambda: self.adapters.load(message.name, message.path))

    def unload_lora(self, message: UnloadLora) -> None:
        self.update_adapters(message, lambda: self.adapters.unload(message.name))

    def update_adapters(self, message: LoadLora | UnloadLora, update) -> None:
        """Apply a LoadLora or UnloadLora and answer its frontend; the new list goes out to every
        frontend first, so all know of the change before the one that asked is answered."""
        self.heard_from(message.frontend_id)
        try:
            update()
        except Exception as error:  # a bad path or rank, a name in use or unknown: refused, nothing else
            log.info("refused a LoRA update from %s: %s", message.frontend_id, error)
            reason = str(error) if isinstance(error, LoraRefused) else "the engine could not do it (its log says why)"
            self.send(message.frontend_id, [Delta(message.request_id, [], "error", error=reason)])
            return
        self.publisher.send(None, self.loras())
        self.send(message.frontend_id, [Delta(message.request_id, [], "stop")])

    def set_offline(self, message: SetOffline) -> None:
        """In or out of the frontends' routing: every frontend reads it in the next heartbeat."""
        self.heard_from(message.frontend_id)
        if self.load.offline != message.offline:
            log.info("engine %s %s", self.engine_id, "taken out of routing" if message.offline else "back in routing")
        self.load.offline = message.offline
        self.send(message.frontend_id, [Delta(message.request_id, [], "stop")])

    def reset_prefix_cache(self, message: ResetPrefixCache) -> None:
        """Empty the engine's prefix cache. vLLM refuses while a request holds blocks of it: say so, and why."""
        self.heard_from(message.frontend_id)
        if not self.engine.reset_prefix_cache():
            reason = (f"the engine did not empty its prefix cache: requests hold blocks of it "
                      f"({len(self.owners)} running here); try again once they end")
            self.send(message.frontend_id, [Delta(message.request_id, [], "error", error=reason)])
            return
        log.info("engine %s emptied its prefix cache", self.engine_id)
        if self.cache_emptied is not None:
            self.cache_emptied()
        self.send(message.frontend_id, [Delta(message.request_id, [], "stop")])

    def list_loras(self, message: ListLoras) -> None:
        self.publisher.send(message.frontend_id, self.loras())

    def loras(self) -> Loras:
        return Loras(self.engine_id, self.adapters.version, self.adapters.listing)

    def hello(self, message: Hello) -> None:
        """A frontend (re)joins. What it, or an earlier frontend in its slot, still runs here is
        aborted, and each owner is told so before the Welcome."""
        slot = frontend_slot(message.frontend_id)
        owned = [r for r, frontend in self.owners.items() if frontend_slot(frontend) == slot]
        owned += [r for r, add in self.hold.held.items() if frontend_slot(add.frontend_id) == slot]
        reason = f"frontend {message.frontend_id} said HELLO, so the engine dropped this frontend's requests"
        by_owner = defaultdict(list)
        for request_id, owner in self.abort(Abort(owned), reason):
            by_owner[owner].append(Delta(request_id, [], "abort", error=reason))
        for owner, deltas in by_owner.items():
            self.send(owner, deltas)
        log.info("frontend %s joined (%d earlier requests in its slot aborted)", message.frontend_id, len(owned))
        self.frontends[message.frontend_id] = time.monotonic()
        self.welcome(message.frontend_id)

    def heard_from(self, frontend_id: str) -> None:
        if frontend_id not in self.frontends:  # forgotten while idle: its numbering starts afresh
            self.welcome(frontend_id)
        self.frontends[frontend_id] = time.monotonic()

    def resync(self, message: Resync) -> None:
        """Send a frontend that lost a CachedBlocks the whole prefix cache: only one it welcomed (it has
        its numbering), and at most once every RESYNC_INTERVAL_S."""
        now = time.monotonic()
        if message.frontend_id not in self.frontends:
            return
        if now - self.resynced.get(message.frontend_id, -RESYNC_INTERVAL_S) >= RESYNC_INTERVAL_S:
            self.resynced[message.frontend_id] = now
            self.publisher.snapshot(message.frontend_id)

    def welcome(self, frontend_id: str) -> None:
        self.taken.pop(frontend_id, None)  # the frontend counts its sends afresh from a Welcome
        welcome = Welcome(self.engine_id, frontend_id, self.model, self.tokenizer, self.max_model_len,
                          self.adapters.listing, self.adapters.runtime_updates, self.adapters.version,
                          self.resumes_grammars, image_token_id=self.image_token_id, **self.model_facts)
        self.publisher.send(frontend_id, welcome)

    def forget_idle_frontends(self) -> None:
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + FORGET_AFTER_S / 10
        busy = set(self.owners.values()) | {add.frontend_id for add in self.hold.held.values()}
        for frontend_id, heard in list(self.frontends.items()):
            if frontend_id not in busy and now - heard > FORGET_AFTER_S:
                del self.frontends[frontend_id]
                self.taken.pop(frontend_id, None)
                self.resynced.pop(frontend_id, None)
                self.publisher.forget(frontend_id)

    def step(self) -> None:
        by_frontend = defaultdict(list)
        generated = 0
        for output in self.engine.step():
            frontend_id = self.owners.get(output.request_id)
            if frontend_id is None:  # aborted while in the step
                continue
            if not isinstance(output.outputs, list):  # a pooling request's result: it finished in this step
                del self.owners[output.request_id]
                self.hold.ended(output.request_id)
                self.count_use(output, 0)
                self.backlog.done(output.request_id)
                by_frontend[frontend_id].append(pooled_delta(output))
                if self.log_requests:
                    self.log_end(output.request_id, "pooled")
                continue
            completion = output.outputs[0]
            finish_reason = completion.finish_reason if output.finished else None
            if output.finished:
                del self.owners[output.request_id]
                self.hold.ended(output.request_id)
                if self.tracing is not None:
                    self.tracing.finished(output)
                if self.log_requests:
                    self.log_end(output.request_id, finish_reason)
            token_ids = list(completion.token_ids)
            cached = self.count_use(output, len(token_ids))
            if token_ids or output.finished:  # its prefill is done
                self.backlog.done(output.request_id)
            generated += len(token_ids)
            by_frontend[frontend_id].append(
                Delta(
                    output.request_id,
                    token_ids,
                    finish_reason,
                    error=ENDED_BY_ERROR if finish_reason == "error" else None,
                    logprobs=convert_logprobs(token_ids, completion.logprobs),
                    prompt_logprobs=prompt_logprobs(output),
                    stop_token_id=stop_token_id(completion) if output.finished else None,
                    prompt_tokens=self.expanded.pop(output.request_id, None),
                    num_cached_tokens=cached,
                )
            )
        self.load.load.generation_tokens_total += generated
        for frontend_id, deltas in by_frontend.items():
            self.send(frontend_id, deltas)

    def count_use(self, output, generated: int) -> int | None:
        """The tenant's tokens of this step: its prompt's with its first output (computed, and found in
        the prefix cache), and what it generated. Returns the prompt tokens from the cache with the first
        output, else None."""
        tenant, prompt_tokens = self.tenant_of.get(output.request_id, ("", 0))
        prefilled = output.request_id in self.backlog.requests and (generated or output.finished)
        cached = min(getattr(output, "num_cached_tokens", None) or 0, prompt_tokens) if prefilled else 0
        self.usage.count(tenant, prompt_tokens=prompt_tokens - cached if prefilled else 0, cached_tokens=cached,
                         output_tokens=generated)
        if output.finished:
            self.tenant_of.pop(output.request_id, None)
        return cached if prefilled else None

    def log_end(self, request_id: str, how: str) -> None:
        fields = {"request_id": request_id}
        if trace_id := self.traces.pop(request_id, None):
            fields["trace_id"] = trace_id
        log.info("request %s ended: %s", request_id, how, extra=fields)

    def send(self, frontend_id: str, deltas: list[Delta]) -> None:
        self.publisher.send(frontend_id, StepOutput(self.engine_id, 0, deltas))

    def report_load(self) -> None:
        frontends = len({frontend_slot(frontend_id) for frontend_id in self.frontends})
        report = self.load.step_report(self.engine_id, self.taken, self.backlog.tokens, self.usage, len(self.hold),
                                       frontends)
        if report is not None:
            self.publisher.send(None, report)

    def abort_all(self, reason: str) -> None:
        by_frontend = defaultdict(list)
        for add in self.hold.drop(list(self.hold.held)):
            by_frontend[add.frontend_id].append(Delta(add.request_id, [], "abort", error=reason))
        for request_id, frontend_id in self.owners.items():
            by_frontend[frontend_id].append(Delta(request_id, [], "abort", error=reason))
        if self.owners:
            try:
                self.engine.abort_request(list(self.owners))
            except Exception as error:  # its core may already be gone with the same signal
                log.warning("could not abort in the engine: %s", error)
            if self.tracing is not None:
                self.tracing.stopped(list(self.owners), "abort", reason)
        self.owners.clear()
        self.expanded.clear()
        self.backlog.clear()
        for frontend_id, deltas in by_frontend.items():
            self.send(frontend_id, deltas)


def model_facts(engine) -> dict:
    """What the frontends need to know of the model to serve its tasks (the Welcome's fields)."""
    get_tasks = getattr(engine, "get_supported_tasks", None)
    tasks = list(get_tasks()) if get_tasks is not None else ["generate"]
    config = engine.model_config
    facts = {"tasks": tasks, "score_sep_token": bool(getattr(config, "use_sep_token", True))}
    if "embed" in tasks:
        facts.update(embedding_size=config.get_hidden_size(), is_matryoshka=bool(config.is_matryoshka),
                     matryoshka_dimensions=config.matryoshka_dimensions)
    if "classify" in tasks:
        names = getattr(config.hf_config, "id2label", None) or {}
        facts["labels"] = [str(names.get(index, index)) for index in range(len(names))]
    return facts


def pooled_delta(output) -> Delta:
    """A finished pooling request's one Delta: its vector as little-endian float32."""
    import torch

    vector = output.outputs.data.to(torch.float32).flatten().numpy().astype("<f4")
    return Delta(output.request_id, [], "stop", pooled=vector.tobytes())


def stop_token_id(completion) -> int | None:
    # vLLM's stop_reason is a stop token id or a stop string; the engine is given no stop strings.
    reason = completion.stop_reason
    return reason if isinstance(reason, int) else None


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
