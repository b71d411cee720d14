"""The pooling routes, for the app to mount (docs/pooling.md)."""
from starlette.routing import Route

from frontend.pooling.classify import classify_endpoint
from frontend.pooling.embeddings import embeddings_endpoint, pooling_endpoint
from frontend.pooling.scoring import rerank_endpoint, score_endpoint

POOLING_ROUTES = [
    Route("/v1/embeddings", embeddings_endpoint, methods=["POST"]),
    Route("/pooling", pooling_endpoint, methods=["POST"]),
    Route("/classify", classify_endpoint, methods=["POST"]),
    Route("/score", score_endpoint, methods=["POST"]),
    Route("/v1/score", score_endpoint, methods=["POST"]),
    Route("/rerank", rerank_endpoint, methods=["POST"]),
    Route("/v1/rerank", rerank_endpoint, methods=["POST"]),
    Route("/v2/rerank", rerank_endpoint, methods=["POST"]),
]
