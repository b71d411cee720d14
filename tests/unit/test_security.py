"""Security without an engine process: loopback-only defaults, no unencrypted engine sockets that
leave the host, owner-only secret keys, and the frontend's own body size limit. (The API key: on the
harness in tests/unit/test_text_api.py; CURVE between hosts: tests/test_two_hosts_e2e.py.)"""
import stat

import msgspec
import pytest
import zmq

from common.config import ServerConfig
from common.curve import create_keys, leaves_host
from common.sockets import make_socket


def test_tcp_to_another_host_without_curve_is_refused():
    assert leaves_host("tcp://10.1.2.3:5555")
    assert not leaves_host("tcp://127.0.0.1:5555")
    assert not leaves_host("ipc:///tmp/x")
    server = msgspec.convert({"engine": {"request_address": "tcp://10.1.2.3:5555"}}, ServerConfig)
    context = zmq.Context()
    try:
        with pytest.raises(SystemExit, match="curve"):
            make_socket(context, zmq.PUSH, server.request_address, bind=False, link=server.engine)
    finally:
        context.destroy(linger=0)


def test_defaults_bind_to_ipc_and_loopback():
    server = ServerConfig()
    assert server.request_address.startswith("ipc://")
    assert server.output_address.startswith("ipc://")
    assert server.host == "127.0.0.1"


def test_curve_secret_keys_are_owner_only(tmp_path):
    create_keys(tmp_path)
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in tmp_path.iterdir()}
    assert modes == {"engine.key": 0o644, "frontend.key": 0o644,
                     "engine.key_secret": 0o600, "frontend.key_secret": 0o600}


def test_body_over_the_limit_is_413_at_the_frontend(frontends):
    small = frontends.get(max_body_bytes=4096)
    answer = small.post("/generate", {"prompt": "x" * 5000})
    assert answer.status_code == 413
    assert "4096" in answer.json()["error"]["message"]
    assert small.post("/generate", {"prompt": "x" * 3000, "max_tokens": 2}).status_code == 200


def test_a_request_head_over_its_bound_is_431_and_the_frontend_serves_on(frontend):
    """With `reuse_port: true` no nginx bounds the head: the frontend's own protocol does, before
    httptools has buffered a header that goes on and on; the client still reads the answer."""
    refused = frontend.post("/generate", {"prompt": "hi", "max_tokens": 2}, headers={"x-big": "a" * 1_000_000})
    assert refused.status_code == 431
    assert refused.json()["error"] == {"message": "the request line and headers are over 64 KiB",
                                       "type": "invalid_request_error", "param": None, "code": 431}
    headed = frontend.post("/generate", {"prompt": "hi", "max_tokens": 2}, headers={"x-long": "a" * 30_000})
    assert headed.status_code == 200
