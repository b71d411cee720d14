"""POST /classify (vLLM's): each input's class probabilities and most likely label, on a sequence
classification model."""
from starlette.requests import Request
from starlette.responses import Response

from frontend.http import json_response, read_json, unless_disconnected
from frontend.openai.protocol import now, response_id
from frontend.pooling.inputs import as_inputs, input_ids
from frontend.pooling.protocol import Classification, ClassificationRequest, ListResponse, check_unserved, pooling_usage
from frontend.pooling.run import pool_inputs
from frontend.pooling.vectors import answer_off_the_loop
from frontend.run.state import FrontendState


async def classify_endpoint(request: Request) -> Response:
    state: FrontendState = request.app.state.frontend
    body = await read_json(request, ClassificationRequest, state.server.max_body_bytes)
    check_unserved(body)
    pool, name = state.pool_for(body.model, "classify")
    ids = await input_ids(pool, as_inputs(body.input, "input"), state.server.limits, "input",
                          body.add_special_tokens, body.truncate_prompt_tokens, body.truncation_side)
    params = {"task": "classify", "use_activation": body.use_activation}
    vectors = await unless_disconnected(request, pool_inputs(pool, ids, params))
    labels = pool.client.welcome.labels

    def answer(vectors) -> Response:
        data = []
        for index, probs in enumerate(vectors):
            best = int(probs.argmax())
            data.append(Classification(index, labels[best] if best < len(labels) else None, probs.tolist(),
                                       len(probs)))
        usage = pooling_usage(sum(map(len, ids)))
        return json_response(ListResponse(response_id("classify"), now(), name, data, usage))

    return await answer_off_the_loop(vectors, answer)
