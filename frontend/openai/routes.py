"""The OpenAI-compatible API's routes, for the app to mount."""
from starlette.routing import Route

from frontend.openai.chat import chat_completions_endpoint
from frontend.openai.completions import completions_endpoint
from frontend.openai.lora_adapters import load_lora_adapter, unload_lora_adapter
from frontend.openai.models import list_models, retrieve_model
from frontend.openai.responses import RESPONSES_ROUTES
from frontend.openai.tokenize import detokenize_endpoint, tokenize_endpoint

OPENAI_ROUTES = [
    Route("/v1/models", list_models),
    Route("/v1/models/{model:path}", retrieve_model),
    Route("/v1/completions", completions_endpoint, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions_endpoint, methods=["POST"]),
    *RESPONSES_ROUTES,
    Route("/tokenize", tokenize_endpoint, methods=["POST"]),
    Route("/detokenize", detokenize_endpoint, methods=["POST"]),
    Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
    Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
]
