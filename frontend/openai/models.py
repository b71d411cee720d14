"""GET /v1/models and /v1/models/{model}: the one model this server serves, under its served name."""
from starlette.requests import Request
from starlette.responses import Response

from frontend.engine_client import EngineUnavailable
from frontend.http import HTTPError, json_response
from frontend.openai.protocol import ModelCard, ModelList, now
from frontend.state import FrontendState


def model_card(state: FrontendState) -> ModelCard:
    welcome = state.client.welcome
    if welcome is None:
        raise EngineUnavailable("the engine is not available")
    return ModelCard(id=welcome.model, created=now(), root=welcome.tokenizer, max_model_len=welcome.max_model_len)


def served_model(state: FrontendState, requested: str | None) -> str:
    """The served name; a request that names another model is a 404, as with OpenAI."""
    name = model_card(state).id
    if requested not in (None, "", name):
        raise HTTPError(404, f"the model {requested!r} does not exist; this server serves {name!r}", "model")
    return name


async def list_models(request: Request) -> Response:
    return json_response(ModelList(data=[model_card(request.app.state.frontend)]))


async def retrieve_model(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    served_model(state, request.path_params["model"])
    return json_response(model_card(state))
