"""What `make serve` refuses before it starts or renders anything: `common.service`'s start, run in
this process on a server.yml and inference.yml of the test's own."""
from pathlib import Path

import pytest
import yaml

from common import service


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """Write server.yml and inference.yml for a start; returns the run_dir it would use."""
    monkeypatch.delenv("API_KEY", raising=False)

    def write(server: dict, engine_args: dict | None = None) -> Path:
        run_dir = tmp_path / "run"
        (tmp_path / "server.yml").write_text(yaml.safe_dump({"run_dir": str(run_dir), **server}))
        (tmp_path / "inference.yml").write_text(yaml.safe_dump({"engine_args": engine_args or {}}))
        monkeypatch.setenv("SERVER_CONFIG", str(tmp_path / "server.yml"))
        monkeypatch.setenv("INFERENCE_CONFIG", str(tmp_path / "inference.yml"))
        return run_dir

    return write


def test_service_refuses_every_interface_without_an_api_key(configs, capsys):
    run_dir = configs({"host": "0.0.0.0"})
    assert service.serve() != 0
    stderr = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in stderr and "API_KEY" in stderr
    assert not run_dir.exists(), "nothing may be started or rendered"


def test_unknown_engine_argument_fails_the_start_naming_it(configs, capsys):
    run_dir = configs({}, engine_args={"max_num_seq": 8})
    assert service.serve() != 0
    stderr = capsys.readouterr().err
    assert "engine_args.max_num_seq is not an argument of vLLM's EngineArgs" in stderr
    assert "did you mean max_num_seqs?" in stderr
    assert not run_dir.exists(), "nothing may be started or rendered"
