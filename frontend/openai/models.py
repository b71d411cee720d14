"""GET /v1/models and /v1/models/{model}: the model this server serves, under its served name, and the
LoRA adapters its engines serve beside it; and `served_model`, which every route asks what a request's
`model` names."""
from starlette.requests import Request
from starlette.responses import Response

from frontend.engine_client import EngineUnavailable
from frontend.http import HTTPError, json_response
from frontend.openai.protocol import ModelCard, ModelList, now
from frontend.router import current_scope
from frontend.run.state import FrontendState


def model_card(state: FrontendState) -> ModelCard:
    welcome = state.client.welcome
    if welcome is None:
        raise EngineUnavailable("the engine is not available")
    return ModelCard(id=welcome.model, created=now(), root=welcome.tokenizer, max_model_len=welcome.max_model_len)


def model_cards(state: FrontendState) -> list[ModelCard]:
    base = model_card(state)
    adapters = [ModelCard(id=name, created=base.created, root=path, parent=base.id, max_model_len=base.max_model_len)
                for name, path in sorted(state.client.loras.items())]
    return [base, *adapters]


def served_model(state: FrontendState, requested: str | None) -> str:
    """The name the answer gives as its model: the served model's, or that of the LoRA adapter the
    request names, which its generations then use (through the request's RoutingScope, so every route
    that asks here gets adapters with nothing more). Any other name is a 404, as with OpenAI."""
    name = model_card(state).id
    if requested in (None, "", name):
        return name
    if requested in state.client.loras:
        current_scope().lora = requested
        return requested
    adapters = f" and {len(state.client.loras)} LoRA adapters (GET /v1/models lists them)" if state.client.loras else ""
    raise HTTPError(404, f"the model {requested!r} does not exist; this server serves {name!r}{adapters}", "model")


async def list_models(request: Request) -> Response:
    return json_response(ModelList(data=model_cards(request.app.state.frontend)))


async def retrieve_model(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    name = served_model(state, request.path_params["model"])
    return json_response(next(card for card in model_cards(state) if card.id == name))
