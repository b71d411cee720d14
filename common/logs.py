"""One log format for every process, so supervisord's merged logs read as one story: text lines, or with
server.yml's `log_format: json` one JSON object a line (docs/tracing.md, "JSON logs").

A line that concerns a request carries its request id, its tenant (when there is one) and its trace id
(when it is traced): from `request_fields`, which a frontend sets for each HTTP request's task, or from
a log call's `extra`, as the engine worker gives them."""
import atexit
import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
REQUEST_FIELDS = ("request_id", "tenant", "trace_id")

# What the lines logged in this task concern: {"request_id": ..., "tenant": ..., "trace_id": ...}.
request_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar("request_fields", default=None)


class RequestFields(logging.Filter):
    """Puts the current request's fields on each record that names none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = request_fields.get()
        if fields:
            for name, value in fields.items():
                if value is not None and not hasattr(record, name):
                    setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    """time, level, logger, process, message, and the request's fields where the record has them."""
    return JsonFormatter(JSON_FORMAT, rename_fields=JSON_NAMES, json_ensure_ascii=False)


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(FORMAT))
    handler.addFilter(RequestFields())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # uvicorn's loggers have handlers of their own; with JSON lines they go through the root's.
    if log_format == "json":
        logging.captureWarnings(True)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def json_lines_only() -> None:
    """Every line this process and the processes it starts write to stdout and stderr outside of
    logging (C++ warnings, progress bars, prints) becomes a JSON object too: both descriptors go through
    a pipe that a thread reads, passing JSON lines on as they are and wrapping the others."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    read, write = os.pipe()
    for fd in (1, 2):
        os.dup2(write, fd)
    os.close(write)

    def copy():
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                out.write(line if is_json(line) else wrapped(line))

    copier = threading.Thread(target=copy, name="json-lines", daemon=True)
    copier.start()

    def drain():  # at exit: let the thread copy what is left once no one else holds the pipe
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        copier.join(timeout=2)

    atexit.register(drain)


def is_json(line: bytes) -> bool:
    if not line.startswith(b"{"):
        return False
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def wrapped(line: bytes) -> bytes:
    text = line.decode(errors="replace").rstrip("\n")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    return json.dumps({"time": stamp, "level": "INFO", "logger": "output", "process": os.getpid(),
                       "message": text}, ensure_ascii=False).encode() + b"\n"


def vllm_logging_config(run_dir: Path, level: str) -> Path:
    """vLLM's loggers in JSON lines too, in this process and in the engine core it spawns: a logging
    configuration file that VLLM_LOGGING_CONFIG_PATH names (vLLM reads it when it configures logging)."""
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "common.logs.json_formatter"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level.upper(), "propagate": False}},
    }
    path = run_dir / f"vllm-logging-{os.getpid()}.json"
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def stage(log: logging.Logger, name: str):
    """Log a step of a long start-up as it begins and ends, with how long it took."""
    log.info("%s ...", name)
    started = time.monotonic()
    yield
    log.info("%s: done in %.1f s", name, time.monotonic() - started)
