"""One log format for every process, so supervisord's merged logs read as one story."""
import contextlib
import logging
import time


FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)


@contextlib.contextmanager
def stage(log: logging.Logger, name: str):
    """Log a step of a long start-up as it begins and ends, with how long it took."""
    log.info("%s ...", name)
    started = time.monotonic()
    yield
    log.info("%s: done in %.1f s", name, time.monotonic() - started)
