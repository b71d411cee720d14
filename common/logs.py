"""One log format for every process, so supervisord's merged logs read as one story: text lines, or with
server.yml's `log_format: json` one JSON object a line (docs/tracing.md, "JSON logs").

A line that concerns a request carries its request id, its tenant (when there is one) and its trace id
(when it is traced): from `request_fields`, which a frontend sets for each HTTP request's task, or from
a log call's `extra`, as the engine worker gives them."""
import contextlib
import contextvars
import json
import logging
import os
import time
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
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


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
