"""/health and requests while no engine has welcomed the frontend, and once one has: a frontend
started before its engine (the slow joiner's side) on the harness, its engine started after it."""
from tests.unit.frontend_harness import Frontend


def test_a_frontend_started_before_its_engine_refuses_with_503_then_turns_healthy(tokenizer, tmp_path_factory):
    frontend = Frontend(str(tmp_path_factory.mktemp("early")), tokenizer, {}, engine_first=False)
    try:
        waiting = frontend.health()
        assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
        assert waiting.json()["status"] == "engine unavailable" and waiting.json()["engine"] is None
        # The probes: the process answers (live), but nothing can be served (not ready).
        assert frontend.http.get(frontend.url + "/health/live").status_code == 200
        assert frontend.http.get(frontend.url + "/health/ready").status_code == 503
        refused = frontend.post("/generate", {"prompt": "x"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "engine" in refused.json()["error"]["message"]
        engine = frontend.start_engine()
        frontend.wait(lambda: frontend.health().status_code == 200, 30, "the frontend to turn healthy")
        assert frontend.health().json()["engine"] == engine.engine_id
        ready = frontend.http.get(frontend.url + "/health/ready")
        assert ready.status_code == 200 and ready.json()["engines"][0]["stalled"] is False
        answer = frontend.post("/generate", {"prompt": "hello", "max_tokens": 3},
                               headers={"accept": "application/json"})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    finally:
        frontend.stop()
