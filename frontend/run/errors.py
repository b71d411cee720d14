"""What each way a generation can fail means to an HTTP client."""
from frontend.engine_client import EngineLost, EngineUnavailable, Overloaded, RequestTimeout
from frontend.http import HTTPError
from frontend.run.generation import EngineRefused

RETRY = {"Retry-After": "1"}

# Errors that can also arrive after the first byte, when a stream must end with an error event.
GENERATION_ERRORS = (EngineLost, EngineRefused, RequestTimeout)


def as_http_error(error: Exception) -> HTTPError:
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, EngineRefused):
        return HTTPError(400, str(error))
    if isinstance(error, RequestTimeout):
        return HTTPError(504, str(error))
    if isinstance(error, (EngineUnavailable, EngineLost, Overloaded)):
        return HTTPError(503, str(error), headers=RETRY)
    raise TypeError(f"no HTTP meaning for {error!r}")


HANDLED = (HTTPError, EngineUnavailable, Overloaded, *GENERATION_ERRORS)
