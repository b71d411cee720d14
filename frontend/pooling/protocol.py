"""The request and response bodies of the pooling routes, as vLLM's own server takes and gives them
(vllm/entrypoints/pooling/: embed, pooling, scoring, classify), so OpenAI's, Cohere's and Jina's
clients read them."""
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from frontend.http import HTTPError
from frontend.pooling.inputs import Inputs, TruncatePromptTokens, TruncationSide


class PoolingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


def pooling_usage(prompt_tokens: int) -> PoolingUsage:
    return PoolingUsage(prompt_tokens, prompt_tokens)


Item = TypeVar("Item")


class ListResponse(msgspec.Struct, Generic[Item]):
    """The answer of /v1/embeddings, /pooling, /classify and /score: one item per input, in order."""

    id: str
    created: int
    model: str
    data: list[Item]
    usage: PoolingUsage
    object: str = "list"


class PoolingOptions(msgspec.Struct, kw_only=True):
    """What every pooling request may give beside its inputs."""

    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    truncation_side: TruncationSide | None = None
    use_activation: bool | None = None  # vLLM's: None takes the model's pooler default
    # vLLM's, not served here: a request that sets one is refused (check_unserved), not half-answered.
    messages: Any = None
    padding: Any = None
    embed_dtype: Any = None
    endianness: Any = None
    mm_processor_kwargs: Any = None


UNSERVED = ("messages", "padding", "embed_dtype", "endianness", "mm_processor_kwargs")


def check_unserved(body: PoolingOptions) -> None:
    for field in UNSERVED:
        if getattr(body, field) is not None:
            raise HTTPError(400, f"{field} is not served here (docs/pooling.md, \"Not served\")", field)


class EmbeddingRequest(PoolingOptions, kw_only=True):
    input: Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    add_special_tokens: bool = True


class Embedding(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class PoolingRequest(EmbeddingRequest, kw_only=True):
    task: Literal["embed", "classify"] | None = None  # None: the model's (embed, else classify)


class PooledData(msgspec.Struct):
    index: int
    data: list[float] | str
    object: str = "pooling"


class ClassificationRequest(PoolingOptions, kw_only=True):
    input: Inputs
    add_special_tokens: bool = True


class Classification(msgspec.Struct):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


# A text to score: vLLM also takes multimodal content parts here, which text models do not.
ScoreText = str
ScoreTexts = str | list[str]


class ScoreOptions(PoolingOptions, kw_only=True):
    max_tokens_per_query: Annotated[int, Meta(ge=0)] = 0
    max_tokens_per_doc: Annotated[int, Meta(ge=0)] = 0


class ScoreRequest(ScoreOptions, kw_only=True):
    """vLLM's four spellings of the two sides: queries/documents, queries/items, data_1/data_2 and
    text_1/text_2. One text on a side is scored against each of the other side's; else pair by pair."""

    queries: ScoreTexts | None = None
    documents: ScoreTexts | None = None
    items: ScoreTexts | None = None
    data_1: ScoreTexts | None = None
    data_2: ScoreTexts | None = None
    text_1: ScoreTexts | None = None
    text_2: ScoreTexts | None = None


class ScoreData(msgspec.Struct):
    index: int
    score: float
    object: str = "score"


class RerankDocument(msgspec.Struct, kw_only=True):
    text: str


class RerankRequest(ScoreOptions, kw_only=True):
    query: ScoreText
    documents: list[ScoreText | RerankDocument]
    top_n: Annotated[int, Meta(ge=0)] = 0  # 0: every document
    return_documents: bool = True  # Cohere's; vLLM always returns them


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(msgspec.Struct):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
