"""CURVE on the engine's sockets: encryption, and only frontends holding an authorized key get in.

A keys directory holds engine.key / engine.key_secret (the engine's pair) and one or more client
pairs (frontend.key / frontend.key_secret); every *.key public key in it is authorized. Create one
with `python -m common.curve DIR` and give each host the files it needs.
"""
import ipaddress
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

ENGINE, CLIENT = "engine", "frontend"


def create_keys(directory: Path) -> None:
    """Secret keys are readable by their owner only (0600), from the moment they exist."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (ENGINE, CLIENT):
        secret = directory / f"{name}.key_secret"
        if not secret.exists():
            previous = os.umask(0o077)
            try:
                zmq.auth.create_certificates(str(directory), name)
            finally:
                os.umask(previous)
            (directory / f"{name}.key").chmod(0o644)
        secret.chmod(0o600)


def start_authenticator(context: zmq.Context, directory: Path) -> ThreadAuthenticator:
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(directory))
    return authenticator


def secure(socket: zmq.Socket, directory: Path, *, server: bool) -> None:
    """Make `socket` a CURVE server (the engine's binds) or client (a frontend's connects)."""
    public, secret = zmq.auth.load_certificate(str(directory / f"{ENGINE if server else CLIENT}.key_secret"))
    socket.curve_secretkey, socket.curve_publickey = secret, public
    if server:
        socket.curve_server = True
    else:
        socket.curve_serverkey, _ = zmq.auth.load_certificate(str(directory / f"{ENGINE}.key"))


def leaves_host(address: str) -> bool:
    """True for a tcp:// address that is not loopback: traffic another host could see."""
    if not address.startswith("tcp://"):
        return False
    host = urlparse(address).hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


if __name__ == "__main__":
    create_keys(Path(sys.argv[1]))
    print(f"CURVE keys in {sys.argv[1]}: engine.key(_secret), frontend.key(_secret)")
