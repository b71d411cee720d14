"""A frontend's record of one engine's reported prefix cache (frontend/cache_record.py): numbered
changes, a lost one seen and a snapshot asked for, and a cap of its own."""
import logging

from common.messages import CachedBlocks
from frontend import cache_record
from frontend.cache_record import CacheRecord


def change(seq: int, stored=(), removed=(), cleared=False) -> CachedBlocks:
    return CachedBlocks("engine-0", seq, list(stored), list(removed), cleared)


def test_changes_apply_in_their_order_and_a_gap_stops_them_until_a_snapshot():
    record = CacheRecord(0, cap=1000)
    assert not record.behind(0)  # an engine that reports nothing yet: nothing missing
    assert record.apply(change(4, [1, 2], cleared=True))  # the snapshot after the Welcome, up to change 4
    assert record.apply(change(4, [2]))  # already in the snapshot
    assert record.apply(change(5, [3], [1]))
    assert sorted(record.blocks) == [2, 3]
    assert not record.apply(change(7, [9]))  # 6 never came
    assert record.seq is None and 9 not in record and 3 in record  # kept, but no change applies to it now
    assert not record.apply(change(8, [10]))
    assert record.apply(change(8, [2, 3, 9, 10, 11], cleared=True))  # the snapshot asked for
    assert record.apply(change(8, [10])) and record.apply(change(9, [], [11]))
    assert sorted(record.blocks) == [2, 3, 9, 10]


def test_a_report_naming_a_later_change_shows_the_loss_of_the_last_one():
    record = CacheRecord(0, cap=1000)
    record.apply(change(3, [1], cleared=True))
    assert not record.behind(3) and record.behind(4)
    lost_snapshot = CacheRecord(0, cap=1000)  # the snapshot after the Welcome never came
    assert lost_snapshot.behind(2)


def test_resyncs_are_asked_for_again_only_after_a_while(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(cache_record.time, "monotonic", lambda: now[0])
    record = CacheRecord(0, cap=1000)
    record.apply(change(1, [1], cleared=True))
    assert record.ask_resync() and not record.ask_resync()
    now[0] += cache_record.RESYNC_RETRY_S
    assert record.ask_resync()
    record.apply(change(5, [1], cleared=True))
    assert record.ask_resync()  # answered: a new loss asks at once


def test_past_the_cap_the_earliest_reported_eighth_is_forgotten(caplog):
    caplog.set_level(logging.WARNING)
    record = CacheRecord(3, cap=16)
    record.apply(change(0, range(16), cleared=True))
    assert len(record) == 16
    record.apply(change(1, [100]))
    assert len(record) == 14 and 0 not in record and 2 not in record and 3 in record and 100 in record
    record.apply(change(2, [101, 102]))
    record.apply(change(3, range(200, 230), cleared=True))  # a snapshot larger than the cap
    assert len(record) == 14 and 229 in record
    assert caplog.text.count("engine 3 reports more prefix blocks than router.max_reported_blocks (16)") == 1


def test_a_lost_engine_leaves_nothing_behind():
    record = CacheRecord(0, cap=1000)
    record.apply(change(3, [1], cleared=True))
    record.clear()
    assert len(record) == 0 and not record.reporting and not record.behind(0)
