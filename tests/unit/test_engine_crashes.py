"""How the service counts an engine worker's crashes from supervisord's process table (as its
getAllProcessInfo returns it, seen once a second): in a row, each within the window of its start."""
from common.service import EngineCrashes


def seen(state: str, start: int, stop: int) -> dict:
    # supervisord's table shows exitstatus 0 once a program runs again, whatever ended the run before.
    return {"name": "engine-0", "statename": state, "start": start, "stop": stop, "exitstatus": 0}


def test_crashes_in_a_row_soon_after_their_start_reach_the_limit():
    crashes = EngineCrashes(limit=3, window_s=600)
    assert not crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("EXITED", 1000, 1040))  # 1: ran 40 s
    assert not crashes.limit_reached(seen("STARTING", 1041, 1040))
    assert not crashes.limit_reached(seen("RUNNING", 1041, 1040))
    # Restarted before the next look: the run that ended began at 1041.
    assert not crashes.limit_reached(seen("STARTING", 1101, 1100))  # 2
    assert crashes.limit_reached(seen("RUNNING", 1200, 1190))  # 3: reached
    assert crashes.in_a_row["engine-0"] == 3


def test_a_run_longer_than_the_window_starts_the_count_again():
    crashes = EngineCrashes(limit=2, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("STARTING", 1050, 1040))  # 1
    assert not crashes.limit_reached(seen("STARTING", 5000, 4990))  # ran over an hour: not counted
    assert crashes.in_a_row["engine-0"] == 0
    assert not crashes.limit_reached(seen("STARTING", 5100, 5090))  # 1
    assert crashes.limit_reached(seen("STARTING", 5200, 5190))  # 2


def test_an_end_before_startsecs_is_left_to_supervisord():
    crashes = EngineCrashes(limit=1, window_s=600, startsecs=30)
    crashes.limit_reached(seen("STARTING", 1000, 0))
    for start in range(1000, 1080, 20):  # it never started: supervisord's startretries leave it FATAL
        assert not crashes.limit_reached(seen("STARTING", start, start - 10))
        assert not crashes.limit_reached(seen("BACKOFF", start, start + 10))
    assert not crashes.limit_reached(seen("STARTING", 1100, 1070))
    assert crashes.limit_reached(seen("STARTING", 1190, 1190))  # the run from 1100 ran past startsecs


def test_a_restart_within_the_second_of_the_crash_still_counts_the_run_that_ended():
    crashes = EngineCrashes(limit=1, window_s=600, startsecs=30)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert crashes.limit_reached(seen("STARTING", 1240, 1240))


def test_a_stop_that_was_asked_for_is_no_crash():
    crashes = EngineCrashes(limit=1, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("STOPPING", 1000, 0))
    assert not crashes.limit_reached(seen("STOPPED", 1000, 1010))
    assert crashes.in_a_row["engine-0"] == 0


def test_a_drained_engine_restarted_before_the_next_look_is_no_crash():
    crashes = EngineCrashes(limit=1, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    # make restart-engines: stopped through supervisord (its "stopped:" line) and started again
    # within the second.
    assert not crashes.limit_reached(seen("STARTING", 1100, 1100), stops_asked=1)
    assert crashes.in_a_row["engine-0"] == 0
    assert crashes.limit_reached(seen("STARTING", 1200, 1190), stops_asked=1)  # a crash still counts


def test_no_limit_restarts_forever():
    crashes = EngineCrashes(limit=0, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not any(crashes.limit_reached(seen("STARTING", 1000 + 10 * i + 1, 1000 + 10 * i)) for i in range(1, 50))
