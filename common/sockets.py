"""ZeroMQ sockets as both sides make them: water marks set on purpose, no linger, CURVE when asked."""
from pathlib import Path

import zmq

from common.config import ROOT, EngineLinkConfig
from common.curve import leaves_host, secure


def make_socket(context: zmq.Context, kind: int, address: str, *, bind: bool, link: EngineLinkConfig):
    if leaves_host(address) and not link.curve:
        raise SystemExit(f"{address} leaves this host: set engine.curve: true (and curve_keys_dir)")
    socket = context.socket(kind)
    if link.curve:
        # The binding side is the engine: the CURVE server.
        secure(socket, curve_keys_dir(link), server=bind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, link.send_hwm)
    socket.setsockopt(zmq.RCVHWM, link.receive_hwm)
    if kind == zmq.PUSH:
        # Queue nothing for an engine that is not connected: a request sent into the void
        # would reach the next engine long after its client was told it failed.
        socket.setsockopt(zmq.IMMEDIATE, 1)
    if bind:
        socket.bind(address)
    else:
        socket.connect(address)
    return socket


def curve_keys_dir(link: EngineLinkConfig) -> Path:
    return (ROOT / link.curve_keys_dir).resolve()
