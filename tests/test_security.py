"""Security: CURVE on TCP engine sockets (a peer without the key gets nothing), the optional API
key, body size limits, and loopback-only defaults."""
import subprocess
import sys

import httpx
import pytest
import yaml
import zmq
import zmq.auth

from common.config import ServerConfig
from common.curve import create_keys, leaves_host
from common.messages import Hello, encode
from tests.conftest import Deployment, free_port, is_healthy, wait_for

API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def secure_pair(model_dir):
    requests_port, outputs_port = free_port(), free_port()
    deployment = Deployment("secure", frontends=1, server={
        "api_key": API_KEY,
        "max_body_bytes": 4096,
        "engine": {"request_address": f"tcp://127.0.0.1:{requests_port}",
                   "output_address": f"tcp://127.0.0.1:{outputs_port}", "curve": True},
    })
    keys = deployment.dir / "keys"
    create_keys(keys)
    deployment.server["engine"]["curve_keys_dir"] = str(keys)
    (deployment.dir / "server.yml").write_text(yaml.safe_dump(deployment.server))
    deployment.keys = keys
    deployment.request_address = f"tcp://127.0.0.1:{requests_port}"
    deployment.output_address = f"tcp://127.0.0.1:{outputs_port}"
    try:
        deployment.start("-m", "engine_worker", log="engine")
        deployment.start("-m", "frontend", "--index", "0", log="frontend")
        wait_for(lambda: is_healthy(deployment.frontend_url(0)), 180, 0.5, "the frontend to turn healthy over CURVE")
        yield deployment
    finally:
        deployment.close()


def auth(key=API_KEY):
    return {"authorization": f"Bearer {key}"}


def test_frontend_holding_the_key_is_served_over_curve(secure_pair):
    answer = httpx.post(secure_pair.frontend_url(0) + "/generate", json={"prompt": "hi", "max_tokens": 4},
                        headers=auth(), timeout=60)
    assert answer.status_code == 200


def intruder_hears_anything(pair, curve_keys=None, prefix: tuple[str, ...] = ()) -> bool:
    """A second process (PUSH + SUB) tries the engine's sockets; True if any output reached it.
    `prefix` runs it elsewhere, e.g. in another network namespace."""
    script = f"""
import sys, zmq, zmq.auth
ctx = zmq.Context()
sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
for s in (sub, push):
    s.linger = 0
    keys = {str(curve_keys) if curve_keys else None!r}
    if keys:
        pub, sec = zmq.auth.load_certificate(keys + "/intruder.key_secret")
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.curve_serverkey, _ = zmq.auth.load_certificate(keys + "/server.key")
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect({pair.output_address!r}); push.connect({pair.request_address!r})
push.send(bytes.fromhex({encode(Hello("intruder")).hex()!r}), zmq.NOBLOCK) if push.poll(0, zmq.POLLOUT) else None
print("heard" if sub.poll(3000) else "nothing")
"""
    result = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    return result.stdout.strip().endswith("heard")


def test_peer_without_a_key_hears_nothing(secure_pair):
    assert not intruder_hears_anything(secure_pair)


def test_peer_with_an_unauthorized_key_hears_nothing(secure_pair, tmp_path):
    zmq.auth.create_certificates(str(tmp_path), "intruder")
    (tmp_path / "server.key").write_bytes((secure_pair.keys / "engine.key").read_bytes())
    assert not intruder_hears_anything(secure_pair, tmp_path)


def test_peer_with_an_authorized_key_hears_heartbeats(secure_pair, tmp_path):
    """The same probe does hear the engine once its key is authorized: the two above are real refusals."""
    for name in ("frontend.key", "frontend.key_secret"):
        (tmp_path / name.replace("frontend", "intruder")).write_bytes((secure_pair.keys / name).read_bytes())
    (tmp_path / "server.key").write_bytes((secure_pair.keys / "engine.key").read_bytes())
    assert intruder_hears_anything(secure_pair, tmp_path)


def test_tcp_to_another_host_without_curve_is_refused():
    assert leaves_host("tcp://10.1.2.3:5555")
    assert not leaves_host("tcp://127.0.0.1:5555")
    assert not leaves_host("ipc:///tmp/x")
    server = {"engine": {"request_address": "tcp://10.1.2.3:5555"}}
    result = subprocess.run([sys.executable, "-c", f"""
import msgspec, zmq
from common.config import ServerConfig
from common.sockets import make_socket
server = msgspec.convert({server!r}, ServerConfig)
make_socket(zmq.Context(), zmq.PUSH, server.request_address, bind=False, link=server.engine)
"""], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "curve" in result.stderr


def test_defaults_bind_to_ipc_and_loopback():
    server = ServerConfig()
    assert server.request_address.startswith("ipc://")
    assert server.output_address.startswith("ipc://")
    assert server.host == "127.0.0.1"


@pytest.mark.parametrize("headers", [{}, auth("wrong-key"), {"authorization": API_KEY}],
                         ids=["no key", "wrong key", "no Bearer"])
def test_api_key_is_required(secure_pair, headers):
    answer = httpx.post(secure_pair.frontend_url(0) + "/generate", json={"prompt": "hi"}, headers=headers, timeout=30)
    assert answer.status_code == 401
    assert "API key" in answer.json()["error"]["message"]


def test_health_needs_no_key(secure_pair):
    assert httpx.get(secure_pair.frontend_url(0) + "/health", timeout=10).status_code == 200


def test_body_over_the_limit_is_413_at_the_frontend(secure_pair):
    body = {"prompt": "x" * 5000}
    answer = httpx.post(secure_pair.frontend_url(0) + "/generate", json=body, headers=auth(), timeout=30)
    assert answer.status_code == 413
    assert "4096" in answer.json()["error"]["message"]


def test_body_over_the_limit_is_413_at_nginx(service):
    answer = httpx.post(service.url + "/generate", content=b'{"prompt": "' + b"x" * 1_100_000 + b'"}',
                        headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 413
