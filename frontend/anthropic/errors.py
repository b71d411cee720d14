"""Every failure of the Messages routes in Anthropic's error shape, as an answer."""
from starlette.responses import Response

from frontend.errors import as_http_error
from frontend.http import anthropic_response


def error_response(error: Exception) -> Response:
    return anthropic_response(as_http_error(error))
