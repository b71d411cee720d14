"""Entry point of a frontend process: `python -m frontend --index N` serves on base port + N."""
import argparse
import asyncio
import logging
import secrets
import signal
import socket

import uvicorn

from common.config import load_server
from common.logs import json_lines_only, setup_logging
from frontend import metrics
from frontend.app import build_app
from frontend.bounded_head import BoundedHeadProtocol

log = logging.getLogger("frontend")

# After drain_timeout_s the requests still running are ended with an error event; this is the time
# they get to send it before uvicorn cancels whatever is left.
LAST_EVENT_GRACE_S = 3.0
# How long an idle keep-alive connection stays open. Longer than what reuses one: nginx's upstream
# keepalive_timeout (60 s, conf/nginx.conf) and clients' pools (httpx, so the openai and anthropic SDKs:
# 5 s). uvicorn's own 5 s equals httpx's, so a client could send on a connection the frontend was
# closing that instant and lose the request (a POST is not retried): seen as a read error now and
# then on a steady load of streams.
KEEP_ALIVE_S = 75.0


def run_frontend_process() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args()
    server = load_server()
    if server.log_format == "json":
        json_lines_only()
    setup_logging(server.log_level, server.log_format)
    metrics.forget_dead_processes()
    app = build_app(server, frontend_id=frontend_id(args.index))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=server.frontend_base_port + args.index,
        loop="uvloop",
        http=BoundedHeadProtocol,
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=server.drain_timeout_s + LAST_EVENT_GRACE_S,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    frontend = DrainingServer(config)
    signal.signal(signal.SIGHUP, frontend.on_sighup)
    frontend.run(sockets=[shared_socket(server.host, server.port)] if server.reuse_port else None)
    metrics.forget_this_process()


def frontend_id(index: int) -> str:
    """`<host>-<index>~<random>`: unique across hosts and restarts, since the engine takes a HELLO from
    an id it knows for that frontend's restart; the part before `~` names its slot."""
    return f"{socket.gethostname()}-{index}~{secrets.token_hex(4)}"


def shared_socket(host: str, port: int) -> socket.socket:
    """The public port, bound by every frontend at once; the kernel balances new connections."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class DrainingServer(uvicorn.Server):
    """On SIGTERM uvicorn stops listening (nginx moves on) and waits for running requests;
    /health says 503 meanwhile; those still running after drain_timeout_s end with an error event.
    Says "frontend ... ready" once it listens, in place of uvicorn's start-up lines: its address is
    not the service's (nginx's is)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        if config.log_level not in ("debug", "trace"):
            logging.getLogger("uvicorn.error").addFilter(quiet_routine_lines)

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            frontend = self.config.app.state.frontend
            self.loop = asyncio.get_running_loop()
            log.info("frontend %s ready on 127.0.0.1:%d", frontend.frontend_id, self.config.port)

    def on_sighup(self, signum, frame) -> None:
        """`python -m common.service reload`: server.yml's tenants and its tenants_file read again."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.reload_tenants)

    def reload_tenants(self) -> None:
        async def reload():
            try:
                server = await asyncio.to_thread(load_server)
            except (SystemExit, Exception) as error:  # SystemExit: how load_server names a wrong key
                log.error("tenants not reloaded, the ones before stay: %s", error)
                return
            self.config.app.state.tenants.reload(server)

        asyncio.get_running_loop().create_task(reload())

    def _log_started_message(self, listeners):
        pass

    def handle_exit(self, sig, frame):
        self.config.app.state.frontend.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None):
        frontend = self.config.app.state.frontend
        drain_over = asyncio.create_task(frontend.end_running_requests(frontend.server.drain_timeout_s))
        try:
            await super().shutdown(sockets)
        finally:
            drain_over.cancel()


def quiet_routine_lines(record: logging.LogRecord) -> bool:
    return not record.msg.startswith(UVICORN_ROUTINE_LINES)


UVICORN_ROUTINE_LINES = (
    "Started server process", "Waiting for application", "Application startup complete",
    "Application shutdown complete", "Finished server process",
)


if __name__ == "__main__":
    run_frontend_process()
