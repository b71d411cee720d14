"""GET /v1/models and /v1/models/{model}: each model this server serves, under its served name, and
the LoRA adapters its engines serve beside it."""
from starlette.requests import Request
from starlette.responses import Response

from frontend.engine_client import EngineUnavailable
from frontend.http import json_response
from frontend.openai.protocol import ModelCard, ModelList, now
from frontend.run.state import FrontendState


def model_cards(state: FrontendState) -> list[ModelCard]:
    """Every pool whose engines have said hello (those since down too: a request to one is a 503), each
    followed by its LoRA adapters."""
    cards = []
    for pool in state.pools:
        welcome = pool.client.welcome
        if welcome is None:
            continue
        base = ModelCard(id=pool.model, created=now(), root=welcome.tokenizer, max_model_len=welcome.max_model_len)
        cards += [base, *(ModelCard(id=name, created=base.created, root=path, parent=base.id,
                                    max_model_len=base.max_model_len)
                          for name, path in sorted(pool.client.loras.items()))]
    if not cards:
        raise EngineUnavailable("no engine is available")
    return cards


async def list_models(request: Request) -> Response:
    return json_response(ModelList(data=model_cards(request.app.state.frontend)))


async def retrieve_model(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    _, name = state.pool_for(request.path_params["model"], task=None)
    return json_response(next(card for card in model_cards(state) if card.id == name))
