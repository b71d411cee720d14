"""ZeroMQ sockets as both sides make them: water marks set on purpose, no linger."""
import zmq

from common.config import EngineLink


def make_socket(context: zmq.Context, kind: int, address: str, *, bind: bool, link: EngineLink):
    socket = context.socket(kind)
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
