"""Frontend ids: new with each process start, so two hosts of one name or a restart never reuse one;
the part before `~` names the slot (host and index) that the engine matches a restart by."""
import socket

from common.messages import frontend_slot, topic_for
from frontend.__main__ import frontend_id


def test_ids_differ_across_starts_and_name_their_slot():
    first, restarted, other = frontend_id(3), frontend_id(3), frontend_id(4)
    assert first != restarted
    assert frontend_slot(first) == frontend_slot(restarted) == f"{socket.gethostname()}-3"
    assert frontend_slot(other) != frontend_slot(first)
    assert not topic_for(restarted).startswith(topic_for(first))
