"""Two hosts, made of two network namespaces joined by a veth pair: one runs only an engine worker
(frontends: 0), the other only frontends and nginx (local_engines: false, the engine listed in
`engines`), over tcp with CURVE. Requests succeed; a peer without the key, or with a key the engine
does not know, hears nothing; one with the frontends' key does."""
import secrets
import subprocess
import sys

import pytest
import yaml
import zmq.auth

from common.curve import create_keys
from common.messages import Hello, encode
from tests.conftest import Deployment, wait_for

ENGINE_IP, FRONTEND_IP = "10.231.0.1", "10.231.0.2"
REQUESTS_PORT, OUTPUTS_PORT = 5555, 5556


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces():
    """Two namespaces ("hosts") with loopback up and a veth link between them; removed after."""
    tag = secrets.token_hex(3)
    engine_ns, frontend_ns = f"llm-eng-{tag}", f"llm-fe-{tag}"
    ip("netns", "add", engine_ns)
    ip("netns", "add", frontend_ns)
    try:
        ip("link", "add", f"ve{tag}a", "type", "veth", "peer", "name", f"ve{tag}b")
        for ns, device, address in ((engine_ns, f"ve{tag}a", ENGINE_IP), (frontend_ns, f"ve{tag}b", FRONTEND_IP)):
            ip("link", "set", device, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", device)
            ip("-n", ns, "link", "set", device, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield engine_ns, frontend_ns
    finally:
        ip("netns", "del", engine_ns)  # takes its end of the veth pair, and so the pair, with it
        ip("netns", "del", frontend_ns)


def write_server(deployment: Deployment, **changes) -> None:
    deployment.server.update(changes)
    (deployment.dir / "server.yml").write_text(yaml.safe_dump(deployment.server))


def curl(ns: str, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-w", "\n%{http_code}", *args, url],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two_hosts(namespaces, model_dir):
    engine_ns, frontend_ns = namespaces
    engine_host, frontend_host = Deployment("host-eng", frontends=1), Deployment("host-fe", frontends=2)
    keys = engine_host.dir / "keys"
    create_keys(keys)
    request, output = f"tcp://{ENGINE_IP}:{REQUESTS_PORT}", f"tcp://{ENGINE_IP}:{OUTPUTS_PORT}"
    write_server(engine_host, frontends=0, engine={"request_address": request, "output_address": output,
                                                    "curve": True, "curve_keys_dir": str(keys)})
    write_server(frontend_host, local_engines=False, engines=[{"request_address": request, "output_address": output}],
                 engine={"curve": True, "curve_keys_dir": str(keys)})
    try:
        for ns, deployment in ((engine_ns, engine_host), (frontend_ns, frontend_host)):
            deployment.prefix = ("ip", "netns", "exec", ns)
            deployment.start("-m", "common.service", log="service")
        frontend_host.ns = frontend_ns
        wait_for(lambda: curl(frontend_ns, frontend_host.url + "/health").stdout.endswith("200"), 900, 1,
                 "the frontend host to be served by the engine host")
        yield frontend_host, engine_host
    finally:
        frontend_host.close()
        engine_host.close()


def test_requests_through_nginx_reach_the_engine_on_the_other_host(two_hosts):
    frontend_host, _ = two_hosts
    for _ in range(4):  # both frontends, through nginx
        answer = curl(frontend_host.ns, frontend_host.url + "/generate", "-H", "content-type: application/json",
                      "-d", '{"prompt": "hello", "max_tokens": 6, "ignore_eos": true}')
        body, _, status = answer.stdout.rpartition("\n")
        assert status == "200", body
        assert body
    health = curl(frontend_host.ns, frontend_host.url + "/health").stdout.rpartition("\n")[0]
    assert '"up":true' in health.replace(" ", "")


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


class Pair:
    request_address = f"tcp://{ENGINE_IP}:{REQUESTS_PORT}"
    output_address = f"tcp://{ENGINE_IP}:{OUTPUTS_PORT}"


def test_a_peer_without_the_key_hears_nothing_and_one_with_it_does(two_hosts, tmp_path):
    frontend_host, engine_host = two_hosts
    in_frontend_host = ("ip", "netns", "exec", frontend_host.ns)
    assert not intruder_hears_anything(Pair, prefix=in_frontend_host)
    # A key pair of its own, the engine's public key known: still not authorized.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "intruder")
    (stranger / "server.key").write_bytes((engine_host.dir / "keys" / "engine.key").read_bytes())
    assert not intruder_hears_anything(Pair, stranger, prefix=in_frontend_host)
    # The same probe holding the frontends' key hears the heartbeats: the refusal above is CURVE's.
    keys = engine_host.dir / "keys"
    for name in ("frontend.key", "frontend.key_secret"):
        (tmp_path / name.replace("frontend", "intruder")).write_bytes((keys / name).read_bytes())
    (tmp_path / "server.key").write_bytes((keys / "engine.key").read_bytes())
    assert intruder_hears_anything(Pair, tmp_path, prefix=in_frontend_host)
