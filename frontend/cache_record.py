"""What a frontend keeps of one engine's reported prefix cache (exact placement, docs/fleet.md): the
blocks its CachedBlocks say it holds, at most `cap` of them, and whether one of those messages was lost
on the way. The engine numbers its changes; a gap, or a LoadReport or Heartbeat naming a later number
than the last one here, means a change was lost, and only a whole snapshot (asked for with Resync)
makes the record true again. Until it comes the record keeps what it had: mostly right, and better for
placing prompts than nothing.
"""
import logging
import time
from itertools import islice

from common.messages import CachedBlocks

log = logging.getLogger(__name__)

# A Resync not answered within this long is sent again (the engine may have been busy, or have
# refused it as too soon after the last).
RESYNC_RETRY_S = 2.0


class CacheRecord:
    def __init__(self, rank: int, cap: int):
        self.rank = rank
        self.cap = cap
        self.blocks: dict[int, None] = {}  # earliest reported first
        self.seq: int | None = None  # the number of the last change applied; None: no whole state
        self.reporting = False  # a whole state came since the engine welcomed this frontend
        self.resync_asked_at: float | None = None
        self.warned = False

    def __contains__(self, block: int) -> bool:
        return block in self.blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def apply(self, message: CachedBlocks) -> bool:
        """Take one message; False when it shows that an earlier one was lost."""
        if message.cleared:  # a whole state: a snapshot, or vLLM dropped every block
            if self.seq is not None and message.seq < self.seq:
                return True  # older than the state here
            self.blocks = dict.fromkeys(message.stored)
            self.seq, self.reporting, self.resync_asked_at = message.seq, True, None
        elif self.seq is None:
            return False  # no whole state to apply a change to
        elif message.seq <= self.seq:
            return True  # already in the snapshot
        elif message.seq > self.seq + 1:
            self.seq = None
            return False
        else:
            for block in message.removed:
                self.blocks.pop(block, None)
            self.blocks.update(dict.fromkeys(message.stored))
            self.seq = message.seq
        self.trim()
        return True

    def behind(self, cache_seq: int) -> bool:
        """Whether the engine's number of its last change (`cache_seq`, from a LoadReport or Heartbeat)
        shows a change that never arrived, or a state still missing."""
        if self.seq is None:
            return self.reporting or cache_seq > 0
        return cache_seq > self.seq

    def ask_resync(self) -> bool:
        """Whether to send a Resync now: not while an earlier one may still be answered."""
        now = time.monotonic()
        if self.resync_asked_at is not None and now - self.resync_asked_at < RESYNC_RETRY_S:
            return False
        self.seq, self.resync_asked_at = None, now
        return True

    def clear(self) -> None:
        """The engine restarted or was lost: it holds nothing this record knows of."""
        self.blocks = {}
        self.seq, self.reporting, self.resync_asked_at = None, False, None

    def trim(self) -> None:
        """Past the cap, forget the earliest reported eighth at once: one pass over the front of the
        dict then serves many stores."""
        excess = len(self.blocks) - self.cap
        if excess <= 0:
            return
        if not self.warned:
            log.warning("engine %d reports more prefix blocks than router.max_reported_blocks (%d): the "
                        "earliest reported are forgotten", self.rank, self.cap)
            self.warned = True
        for block in list(islice(self.blocks, excess + self.cap // 8)):
            del self.blocks[block]
