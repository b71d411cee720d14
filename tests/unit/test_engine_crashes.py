"""How the service counts an engine worker's crashes from supervisord's process table (as its
getAllProcessInfo returns it, seen once a second) and the ends its log lines told (RunEnd): in a row,
each within the window of its start; a drain (exit status 0) and a stop asked of supervisord are none."""
from common.service import SUPERVISORD_INFO, EngineCrashes, RunEnd, Supervisord


def seen(state: str, start: int, stop: int) -> dict:
    # supervisord's table shows exitstatus 0 once a program runs again, whatever ended the run before.
    return {"name": "engine-0", "statename": state, "start": start, "stop": stop, "exitstatus": 0}


def crash(count: int) -> RunEnd:
    return RunEnd(count, crashed=True)


def test_crashes_in_a_row_soon_after_their_start_reach_the_limit():
    crashes = EngineCrashes(limit=3, window_s=600)
    assert not crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("EXITED", 1000, 1040), crash(1))  # 1: ran 40 s
    assert not crashes.limit_reached(seen("STARTING", 1041, 1040), crash(1))
    assert not crashes.limit_reached(seen("RUNNING", 1041, 1040), crash(1))
    # Restarted before the next look: the run that ended began at 1041.
    assert not crashes.limit_reached(seen("STARTING", 1101, 1100), crash(2))  # 2
    assert crashes.limit_reached(seen("RUNNING", 1200, 1190), crash(3))  # 3: reached
    assert crashes.in_a_row["engine-0"] == 3


def test_an_end_whose_log_line_is_not_read_yet_is_decided_at_the_next_look():
    crashes = EngineCrashes(limit=1, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("STARTING", 1100, 1100), RunEnd())  # the table first
    assert crashes.limit_reached(seen("STARTING", 1100, 1100), crash(1))  # then the line


def test_a_run_longer_than_the_window_starts_the_count_again():
    crashes = EngineCrashes(limit=2, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("STARTING", 1050, 1040), crash(1))  # 1
    assert not crashes.limit_reached(seen("STARTING", 5000, 4990), crash(2))  # ran over an hour: not counted
    assert crashes.in_a_row["engine-0"] == 0
    assert not crashes.limit_reached(seen("STARTING", 5100, 5090), crash(3))  # 1
    assert crashes.limit_reached(seen("STARTING", 5200, 5190), crash(4))  # 2


def test_an_end_before_startsecs_is_left_to_supervisord():
    crashes = EngineCrashes(limit=1, window_s=600, startsecs=30)
    crashes.limit_reached(seen("STARTING", 1000, 0))
    ends = 0
    for start in range(1000, 1080, 20):  # it never started: supervisord's startretries leave it FATAL
        assert not crashes.limit_reached(seen("STARTING", start, start - 10), crash(ends))
        ends += 1
        assert not crashes.limit_reached(seen("BACKOFF", start, start + 10), crash(ends))
    assert not crashes.limit_reached(seen("STARTING", 1100, 1070), crash(ends + 1))
    assert crashes.limit_reached(seen("STARTING", 1190, 1190), crash(ends + 2))  # the run from 1100 ran past startsecs


def test_a_restart_within_the_second_of_the_crash_still_counts_the_run_that_ended():
    crashes = EngineCrashes(limit=1, window_s=600, startsecs=30)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert crashes.limit_reached(seen("STARTING", 1240, 1240), crash(1))


def test_a_stop_that_was_asked_for_is_no_crash():
    crashes = EngineCrashes(limit=1, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not crashes.limit_reached(seen("STOPPING", 1000, 0))
    assert not crashes.limit_reached(seen("STOPPED", 1000, 1010))
    assert crashes.in_a_row["engine-0"] == 0


def test_a_drain_or_a_restart_asked_for_started_again_before_the_next_look_is_no_crash():
    crashes = EngineCrashes(limit=1, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    # make restart-engines: stopped through supervisord and started again within the second
    assert not crashes.limit_reached(seen("STARTING", 1100, 1100), RunEnd(1, crashed=False))
    # a SIGTERM to the worker itself: it drains and exits 0, supervisord starts it again
    assert not crashes.limit_reached(seen("STARTING", 1150, 1150), RunEnd(2, crashed=False))
    assert crashes.in_a_row["engine-0"] == 0
    assert crashes.limit_reached(seen("STARTING", 1200, 1190), crash(3))  # a crash still counts


def test_no_limit_restarts_forever():
    crashes = EngineCrashes(limit=0, window_s=600)
    crashes.limit_reached(seen("RUNNING", 1000, 0))
    assert not any(crashes.limit_reached(seen("STARTING", 1000 + 10 * i + 1, 1000 + 10 * i), crash(i))
                   for i in range(1, 50))


def test_supervisords_lines_tell_a_crash_from_a_drain_and_a_stop_and_its_info_lines_are_not_shown():
    lines = ["2026-12-03 08:51:57,785 WARN exited: engine-0 (terminated by SIGKILL; not expected)",
             "2026-12-03 08:52:57,785 INFO exited: engine-0 (exit status 0; expected)",
             "2026-12-03 08:53:57,785 INFO stopped: engine-0 (exit status 0)",
             "2026-12-03 08:54:57,785 WARN stopped: engine-0 (terminated by SIGKILL)"]
    supervisord = Supervisord.__new__(Supervisord)  # its line parsing alone, no process
    supervisord.exits, supervisord.ends = {}, {}
    told = []
    for line in lines:
        supervisord.note_end(line)
        told.append(supervisord.ends["engine-0"])
    assert told == [RunEnd(1, True), RunEnd(2, False), RunEnd(3, False), RunEnd(4, False)]
    assert supervisord.exits["engine-0"] == "exit status 0"
    assert SUPERVISORD_INFO.match(lines[1]) and SUPERVISORD_INFO.match(lines[2])
    assert not SUPERVISORD_INFO.match(lines[0])
    assert not SUPERVISORD_INFO.match("2026-12-03 08:59:36,515 INFO engine_worker[10580] engine 5459 stopped")
