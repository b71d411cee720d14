"""An engine worker that keeps failing ends `make serve` with its reason, instead of being restarted
forever: one that crashes again and again after it has started (past supervisord's startsecs), and
one that cannot start at all (left FATAL)."""
import os
import re
import signal

import pytest

from tests.conftest import Deployment, alive_in, health, is_healthy, wait_for

STARTSECS = 30  # conf/supervisord-engine.conf: past this, supervisord counts a worker as started


def engine_state(deployment: Deployment) -> str:
    return (deployment.supervisorctl("status", "engine-0").split() or ["?", "?"])[1]


def crash_after_start(deployment: Deployment) -> None:
    """Kill the engine worker and its vLLM processes (as the OOM killer might) once supervisord counts
    it as started."""
    wait_for(lambda: engine_state(deployment) == "RUNNING", STARTSECS + 300, 1, "the engine to be RUNNING")
    os.killpg(deployment.pid("engine-0"), signal.SIGKILL)


@pytest.mark.timeout(2400)  # three engine starts, each bounded by its own wait
def test_an_engine_crashing_after_its_start_again_and_again_ends_the_service_naming_it(model_dir):
    deployment = Deployment("crash-loop", frontends=1,
                            server={"engine_crash_limit": 2, "engine_crash_window_s": 600})
    service = deployment.start("-m", "common.service", log="service")
    try:
        wait_for(lambda: is_healthy(deployment.url), 900, 1, "the service to turn healthy")
        crash_after_start(deployment)
        # Meanwhile the frontends say the engine is gone, and supervisord starts it again.
        wait_for(lambda: (response := health(deployment.url)) is not None and response.status_code == 503,
                 10, 0.2, "/health to say 503")
        assert health(deployment.url).json()["status"] == "engine unavailable"
        wait_for(lambda: is_healthy(deployment.url), 600, 1, "the restarted engine to serve")

        crash_after_start(deployment)
        assert service.wait(timeout=180) == 1
        lines = (deployment.dir / "service.log").read_text().rstrip().splitlines()
        assert lines[-1].startswith("error: engine-0 crashed 2 times in a row, each within 600 s of its start "
                                    "(last: terminated by SIGKILL)"), lines[-5:]
        assert f"{deployment.server['run_dir']}/supervisord.log" in lines[-1]
        assert not alive_in(deployment), "a process of the service outlived it"
    finally:
        deployment.close()


@pytest.mark.timeout(1500)  # up to four tries to import vLLM
def test_an_engine_that_cannot_start_ends_the_start_with_its_reason(model_dir):
    # A name vLLM knows (so the start's own check passes) with a value it refuses.
    deployment = Deployment("engine-fatal", frontends=1, engine_args={"dtype": "no-such-dtype"})
    service = deployment.start("-m", "common.service", log="service")
    try:
        # Each try imports vLLM: minutes on a loaded 2-core machine.
        assert service.wait(timeout=1200) == 1
        log = (deployment.dir / "service.log").read_text()
        # Tries ended within startsecs leave it FATAL; tries that took longer to fail (a loaded host, a
        # slow import) are crashes after its start, and reach engine_crash_limit (3) first.
        assert re.search(r"^error: engine-0 (could not start \(Exited too quickly|crashed 3 times in a row)",
                         log, re.MULTILINE), log[-3000:]
        last_lines = log[log.index("the service's last log lines"):]
        assert "no-such-dtype" in last_lines, "vLLM's own reason, among the service's last log lines"
        assert "serving on" not in log
        assert not alive_in(deployment), "a process of the service outlived it"
    finally:
        deployment.close()
