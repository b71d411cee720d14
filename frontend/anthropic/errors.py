"""Every failure of the Messages routes in Anthropic's error shape, as an answer."""
from starlette.responses import Response

from frontend.http import anthropic_response
from frontend.run.errors import as_http_error


def error_response(error: Exception) -> Response:
    return anthropic_response(as_http_error(error))
