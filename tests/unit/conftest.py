import pytest

from tests.unit.frontend_harness import Frontends


@pytest.fixture(scope="session")
def frontends(tokenizer, tmp_path_factory):
    """Frontend apps without vLLM (tests/unit/frontend_harness.py): `frontends.get(**server_yml_keys)`
    starts one for those keys on first use; each is shared by the session, reset for every test."""
    started = Frontends(tmp_path_factory.mktemp("fe", numbered=True), tokenizer)
    yield started
    started.stop()


@pytest.fixture
def frontend(frontends):
    """The harness frontend with server.yml's defaults. After the test, no request may hold a slot."""
    frontend = frontends.get()
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")
