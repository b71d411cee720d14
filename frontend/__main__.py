"""Entry point of a frontend process: `python -m frontend --index N` serves on base port + N."""
import argparse
import socket

import uvicorn

from common.config import load_server
from common.logs import setup_logging
from frontend.app import build_app


def run_frontend_process() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args()
    server = load_server()
    setup_logging(server.log_level)
    app = build_app(server, frontend_id=f"{socket.gethostname()}-{args.index}")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=server.frontend_base_port + args.index,
        loop="uvloop",
        http="httptools",
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    run_frontend_process()
