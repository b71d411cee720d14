"""One engine's load as a frontend sees it: the engine's latest LoadReport, which counts the requests
of every frontend that the engine took, and this frontend's own sends that no report has acknowledged
yet (docs/fleet.md, "One load view"). So every frontend sees every other frontend's sends within one
engine step, and its own at once.

The router weighs engines by one of two scores:
- `tokens`, in units of one prefill token's compute. A step costs about k0 + a·(prefill tokens) +
  b·(sequences decoded) + c·(KV tokens read). A new request waits for the prefill queued on the engine
  (its own uncached prefill the router adds), then decodes beside the engine's requests: each step they
  share costs it b/a per request and c/a per KV token held, over STEPS_SHARED steps.
- `requests`: vLLM's 4 × waiting + running, this frontend's unacknowledged sends counted as waiting.
Requests the engine holds back (a bounded priority class past its share, engine_worker/priority_hold.py)
count as waiting only for a request of a bounded class: they never delay the others.
"""
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from common.messages import LoadReport

# b/a and c/a for Llama-3-8B on an H100 (bench/HISTORY.md, "Run 1", `vllm serve`): a
# prefill token costs a ≈ 22 µs (TTFT at concurrency 1: 37.5 ms for 1,024 tokens, 18.1 ms for 128); a
# decoding request 35 to 39 µs a step (TPOT 6.23, 8.43 and 16.10 ms at concurrency 1, 64 and 256), of
# which reading its ~640 tokens of KV cache is c·640 ≈ 25 µs (128 KiB a token at 3.35 TB/s: c ≈ 39 ns),
# leaving b ≈ 12 µs. So b/a ≈ 0.5 and c/a ≈ 1/560.
# A request placed now shares its decode with the engine's requests until the first of them ends: half
# of a 512-token answer on average.
STEPS_SHARED = 256
DECODE_TOKENS = STEPS_SHARED * 0.5  # one request the engine runs or queues
KV_TOKENS = STEPS_SHARED / 560  # one token of KV cache it holds

NO_REPORT = LoadReport("", 0, 0, 0, 0, 0, 0)


class Send(NamedTuple):
    """One of this frontend's sends the engine has not acknowledged yet."""
    load: float  # in tokens
    blocks: Sequence[int]  # its prompt's block hashes (common/blocks.py); empty when not routed by prefix


class LoadView:
    def __init__(self):
        self.report = NO_REPORT
        self.unacknowledged: deque[Send] = deque()  # oldest first
        self.unacknowledged_tokens = 0.0
        self.sent = 0  # own ADDs since the engine's last Welcome

    def sent_request(self, prefill_tokens: int, prompt_tokens: int, blocks: Sequence[int] = ()) -> None:
        """This frontend sent the engine a request of `prompt_tokens`, `prefill_tokens` of them not cached;
        `blocks`: its prompt's block hashes."""
        load = prefill_tokens + DECODE_TOKENS + KV_TOKENS * prompt_tokens
        self.unacknowledged.append(Send(load, blocks))
        self.unacknowledged_tokens += load
        self.sent += 1

    def on_report(self, report: LoadReport, frontend_id: str) -> int:
        """Take a report; returns how many reports before it never arrived."""
        if report.seq <= self.report.seq:
            return 0  # not newer than the one here
        lost = report.seq - self.report.seq - 1 if self.report is not NO_REPORT else 0
        self.report = report
        # The engine takes one frontend's ADDs in the order sent: the oldest are the ones it took.
        pending = max(self.sent - report.taken.get(frontend_id, 0), 0)
        while len(self.unacknowledged) > pending:
            self.unacknowledged_tokens -= self.unacknowledged.popleft().load
        if not self.unacknowledged:
            self.unacknowledged_tokens = 0.0  # no rounding left over from the sums
        return lost

    def welcomed(self) -> None:
        """The engine counts this frontend's ADDs from zero again: the sends not acknowledged are the
        ones it has yet to take."""
        self.sent = len(self.unacknowledged)

    def clear(self) -> None:
        """The engine was lost: none of what it reported holds."""
        self.report = NO_REPORT
        self.unacknowledged.clear()
        self.unacknowledged_tokens = 0.0
        self.sent = 0

    @property
    def waiting(self) -> int:
        return self.report.waiting

    @property
    def frontends(self) -> int:
        """The frontends the engine last said it hears from (0 before its first report)."""
        return self.report.frontends

    def unacknowledged_sharing(self, blocks: Sequence[int], run: int) -> list[Send]:
        """This frontend's unacknowledged sends whose prompts begin with the first `run` of `blocks` (block
        hashes chain, so their blocks at `run` - 1 are the same)."""
        last = run - 1
        return [send for send in self.unacknowledged if len(send.blocks) > last and send.blocks[last] == blocks[last]]

    def tokens(self, bounded: bool = False) -> float:
        report = self.report
        waiting = report.waiting + (report.held if bounded else 0)
        return (report.prefill_tokens + DECODE_TOKENS * (waiting + report.running)
                + KV_TOKENS * report.kv_tokens + self.unacknowledged_tokens)

    def requests(self, bounded: bool = False) -> int:
        waiting = self.report.waiting + (self.report.held if bounded else 0)
        return 4 * (waiting + len(self.unacknowledged)) + self.report.running
