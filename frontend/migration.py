"""Moving a generation to another engine when its engine is lost, drains or stalls (docs/failures.md).

The fleet client (frontend/engine_client.py) keeps a Flight for each generation it runs: the ADD as
first sent, the request's queue (which records every token id that arrived on it), the engine it runs
on, and how often it moved. When that engine goes, the flight goes on elsewhere as a new ADD: the
first prompt followed by the ids generated so far, max_tokens and min_tokens less those ids, the same
sampling otherwise, and `resumed_tokens` saying how many of the prompt's ids were generated, after
which the engine resumes its structured-output grammar (engine_worker/resumed_grammar.py). The
generation run reading the queue sees one stream: its detokenizer, stop strings and tool-call parser
carry on, and usage counts the first prompt and every generated token once.

Not moved: a request pinned to its engine (X-data-parallel-rank), one that moved `migration_limit`
times already (so a request that crashes engines cannot take down the fleet one engine at a time),
and a grammar-constrained one that has generated tokens when no engine up can resume its grammar.
Those end with the error of the loss, as before this existed.
"""
from dataclasses import dataclass
from typing import Any

from common.messages import Add

# Why a flight moved: the engine's process ended or restarted (its connection closed, a new engine id,
# or its own Goodbye after a failure), its heartbeats stopped, it was stopped on purpose (Goodbye),
# its steps stopped advancing, or outputs of it were lost on the way (a gap in their numbers).
CAUSES = ("crash", "heartbeat", "drain", "stall", "outputs_lost")
# Why a flight whose engine went could not move.
REFUSALS = ("pinned", "limit", "grammar", "no_engine")


@dataclass
class Flight:
    add: Add  # as first sent
    queue: Any  # its RequestQueue: the Deltas go there, and it keeps the token ids that came
    pinned: bool
    link: Any = None  # the EngineLink it runs on
    moves: int = 0
    image_keys: dict[int, int] | None = None  # its images' hashes at their placeholders, for the router
    trace: Any = None  # its GenerationTrace (frontend/tracing.py) when it is traced

    @property
    def engine_request_id(self) -> str:
        """Each move is a request of its own on its engine, so that outputs an engine still sends for an
        earlier one (a stalled step that ends after all) are never taken for the new one's."""
        return self.add.request_id if not self.moves else f"{self.add.request_id}.{self.moves}"

    @property
    def generated(self) -> list[int]:
        return self.queue.generated

    @property
    def grammar_bound(self) -> bool:
        """It has a grammar, and output the grammar must resume after."""
        return self.add.sampling.get("structured_outputs") is not None and bool(self.generated)

    def refusal(self, limit: int) -> str | None:
        """Why it may not move now, or None."""
        if self.pinned:
            return "pinned"
        if self.moves >= limit:
            return "limit"
        return None

    def remaining(self) -> int:
        if self.add.pooling is not None:  # a pooling request has one result, all of it still to come
            return 1
        return self.add.sampling["max_tokens"] - len(self.generated)

    def continuation(self) -> Add:
        """The ADD that goes on where the generated ids end (a pooling request: the same one again)."""
        if self.add.pooling is not None:
            return Add(self.engine_request_id, self.add.frontend_id, self.add.prompt_token_ids, {}, self.add.lora,
                       pooling=self.add.pooling, tenant=self.add.tenant, priority=self.add.priority)
        generated = self.generated
        sampling = {**self.add.sampling, "max_tokens": self.remaining()}
        if sampling.get("min_tokens"):
            sampling["min_tokens"] = max(sampling["min_tokens"] - len(generated), 0)
        if generated:  # they came with the first output, for the first prompt
            sampling.pop("prompt_logprobs", None)
        return Add(self.engine_request_id, self.add.frontend_id, self.add.prompt_token_ids + generated, sampling,
                   self.add.lora, len(generated), images=self.add.images, trace=self.add.trace,
                   tenant=self.add.tenant, priority=self.add.priority)
