"""Start-up checks and setup, without an engine: what `make serve` refuses, the setup stamp, key modes."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from common.config import ROOT
from common.curve import create_keys
from tests.conftest import Deployment


def start_service(deployment: Deployment, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.service"], cwd=ROOT, env=env or deployment.env,
                          capture_output=True, text=True, timeout=60)


def test_service_refuses_every_interface_without_an_api_key():
    deployment = Deployment("exposed", server={"host": "0.0.0.0"})
    env = {key: value for key, value in deployment.env.items() if key != "API_KEY"}
    try:
        result = start_service(deployment, env)
        assert result.returncode != 0
        assert "refusing to listen on 0.0.0.0" in result.stderr and "API_KEY" in result.stderr
        assert not Path(deployment.server["run_dir"]).exists(), "nothing may be started or rendered"
    finally:
        shutil.rmtree(deployment.dir)


def test_unknown_engine_argument_fails_the_start_naming_it():
    deployment = Deployment("bad-args", engine_args={"max_num_seq": 8})
    try:
        result = start_service(deployment)
        assert result.returncode != 0
        assert "engine_args.max_num_seq is not an argument of vLLM's EngineArgs" in result.stderr
        assert "did you mean max_num_seqs?" in result.stderr
        assert not Path(deployment.server["run_dir"]).exists(), "nothing may be started or rendered"
    finally:
        shutil.rmtree(deployment.dir)


def test_curve_secret_keys_are_owner_only(tmp_path):
    create_keys(tmp_path)
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in tmp_path.iterdir()}
    assert modes == {"engine.key": 0o644, "frontend.key": 0o644,
                     "engine.key_secret": 0o600, "frontend.key_secret": 0o600}


def run_setup(checkout: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(checkout / "venv"), "VLLM_TARGET": "none", "SETUP_MODEL": "0"}
    result = subprocess.run(["bash", "setup.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_setup_skips_itself_until_requirements_change(tmp_path):
    """setup.sh on a copy whose requirements are only pip, in a throwaway venv that sees the
    system's pip; vLLM is left out (VLLM_TARGET=none)."""
    shutil.copy(ROOT / "setup.sh", tmp_path)
    (tmp_path / "requirements.txt").write_text("pip\n")
    (tmp_path / "requirements-test.txt").write_text("pip\n")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(tmp_path / "venv")], check=True)
    log = tmp_path / ".setup.log"

    first = run_setup(tmp_path)
    assert "setup: the service's dependencies" in first.stdout and "done in" in first.stdout
    assert f"pip's output goes to {log}" in first.stdout
    assert "Requirement already satisfied: pip" in log.read_text()

    log.write_text("")
    second = run_setup(tmp_path)
    assert second.stdout == "" and log.read_text() == "", "nothing changed: no stage, no pip"

    (tmp_path / "requirements.txt").write_text("pip\n# a new requirement\n")
    third = run_setup(tmp_path)
    assert "setup: the service's dependencies" in third.stdout
    assert "Requirement already satisfied: pip" in log.read_text()
