"""Every failure of the Messages routes in Anthropic's error shape, as an answer."""
import msgspec
from starlette.responses import Response

from frontend.anthropic.protocol import error_body
from frontend.http import HTTPError

# Every path under it answers errors in Anthropic's shape, whatever layer answers (nginx decides the same way).
ANTHROPIC_PREFIX = "/v1/messages"


def anthropic_response(error: HTTPError) -> Response:
    body = msgspec.json.encode(error_body(error.status, error.message, error.param))
    return Response(body, error.status, headers=error.headers, media_type="application/json")
