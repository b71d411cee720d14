"""A frontend's view of one engine's load (frontend/load_view.py): the engine's reports, which count
every frontend's requests it took, and this frontend's own sends until a report acknowledges them."""
from common.messages import LoadReport
from frontend.load_view import DECODE_TOKENS, KV_TOKENS, LoadView

A, B = "host-0~a", "host-1~b"


def reported(seq: int, taken: dict, waiting: int = 0, running: int = 0, prefill: int = 0, kv: int = 0) -> LoadReport:
    return LoadReport("engine-0", seq, waiting, running, prefill, kv, 100, taken)


def test_several_frontends_see_each_others_sends_through_the_engines_acknowledgements():
    """Frontend A sends 8 requests of 1,000 uncached tokens; until the engine's next report only A counts
    them. The report after the step that took them counts them for every frontend, and A stops counting
    its own copies, so they are counted once."""
    a, b = LoadView(), LoadView()
    for _ in range(8):
        a.sent_request(prefill_tokens=1000, prompt_tokens=1000)
    own = 8 * (1000 + DECODE_TOKENS + KV_TOKENS * 1000)
    assert a.tokens() == own and b.tokens() == 0
    taken = reported(1, {A: 8}, waiting=8, prefill=8000)
    a.on_report(taken, A)
    b.on_report(taken, B)
    assert a.tokens() == b.tokens() == 8000 + 8 * DECODE_TOKENS
    assert a.requests() == b.requests() == 32  # vLLM's score: 4 x 8 waiting


def test_only_the_sends_the_engine_took_are_acknowledged():
    view = LoadView()
    for tokens in (100, 200, 300):
        view.sent_request(tokens, tokens)
    view.on_report(reported(1, {A: 1, B: 40}), A)  # another frontend's count says nothing of ours
    assert [send.load for send in view.unacknowledged] == [t + DECODE_TOKENS + KV_TOKENS * t for t in (200, 300)]
    view.on_report(reported(2, {A: 3}), A)
    assert not view.unacknowledged and view.unacknowledged_tokens == 0


def test_prefill_only_load_counts_its_whole_prompt_until_its_token():
    view = LoadView()
    view.on_report(reported(1, {}, running=1, prefill=32_000), A)
    assert view.tokens() == 32_000 + DECODE_TOKENS
    assert view.requests() == 1  # what vLLM's count sees


def test_a_welcome_restarts_the_count_of_sends_the_engine_has_yet_to_take():
    """The engine forgot an idle frontend; its next ADD brings a Welcome, and the engine counts from 0."""
    view = LoadView()
    for _ in range(5):
        view.sent_request(10, 10)
    view.on_report(reported(1, {A: 5}), A)
    view.sent_request(10, 10)  # the engine forgot us meanwhile
    view.welcomed()
    view.on_report(reported(2, {}), A)  # not yet taken
    assert len(view.unacknowledged) == 1
    view.on_report(reported(3, {A: 1}), A)
    assert not view.unacknowledged


def test_lost_reports_are_counted_and_an_older_one_changes_nothing():
    view = LoadView()
    assert view.on_report(reported(7, {}, running=3), A) == 0  # the first one seen: nothing to compare with
    assert view.on_report(reported(10, {}, running=5), A) == 2
    assert view.on_report(reported(9, {}, running=1), A) == 0 and view.report.running == 5
    view.clear()  # the engine was lost
    assert view.tokens() == 0 and view.on_report(reported(1, {}), A) == 0
