"""Which protocol's error shape answers a path, for every layer that answers an error: the routes'
handlers, routing's own 404 and 405, a failure no handler knows, and the middleware that answers
before any route runs (browser guard, API key, engine pin).

Not in frontend/http.py: choosing a shape means knowing the protocols, and text/, which uses
http.py, must reach none of them (tests/unit/test_layers.py)."""
from starlette.responses import Response

from frontend.anthropic.errors import ANTHROPIC_PREFIX, anthropic_response
from frontend.http import HTTPError


def error_response(error: HTTPError, path: str) -> Response:
    """`error` in the shape of the protocol the route at `path` speaks: Anthropic's under its Messages
    routes, OpenAI's (HTTPError.response) everywhere else."""
    return anthropic_response(error) if path.startswith(ANTHROPIC_PREFIX) else error.response()
