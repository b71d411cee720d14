"""Every failure of the Messages routes in Anthropic's error shape, as an answer."""
import msgspec
from starlette.responses import Response

from frontend.anthropic.protocol import error_body
from frontend.errors import as_http_error
from frontend.http import HTTPError


def error_response(error: Exception) -> Response:
    error: HTTPError = as_http_error(error)
    body = msgspec.json.encode(error_body(error.status, error.message, error.param))
    return Response(body, error.status, headers=error.headers, media_type="application/json")
