"""The HTTP API's request and response bodies (they make the OpenAPI page).

Unknown fields are errors (``extra="forbid"``), so a misspelt field is named in a 422
instead of being silently ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    text: str | None = Field(None, description="the text (a query, a caption, a document)")
    image: str | None = Field(None, description="an image file (PNG, JPEG, ...) in base64")
    instruction: str | None = Field(None, description="task instruction, e.g. 'Find a caption for the given image.'")


class SearchRequest(ItemIn):
    top_k: int = Field(10, description="targets to return (1..limits.max_top_k)")
    rerank: bool = Field(False, description="rerank the embedder's top candidates with the MLLM reranker")


class Hit(BaseModel):
    id: str
    text: str
    image: str = Field(description="image path relative to the index directory; '' for none")
    dataset: str | None = None
    score: float = Field(description="the embedder's cosine similarity")
    rank: int = Field(description="1-based final rank")
    embedder_rank: int = Field(description="1-based rank by the embedder")
    reranker_rank: int | None = Field(None, description="1-based rank by the reranker (reranked hits only)")
    rerank_score: float | None = Field(None, description="P(Yes), pointwise reranking only")


class SearchResponse(BaseModel):
    hits: list[Hit]
    reranked: bool
    fallback: bool = Field(False, description="the listwise answer named no candidate: embedder order kept")


class EmbedRequest(Strict):
    items: list[ItemIn] = Field(description="items to embed (1..limits.max_items)")


class EmbedResponse(BaseModel):
    dim: int
    embeddings: list[list[float]]


class RerankRequest(Strict):
    query: ItemIn
    candidates: list[ItemIn] = Field(description="candidates in their current order (2..limits.max_items)")


class RerankResponse(BaseModel):
    order: list[int] = Field(description="candidate indices, best first")
    scores: list[float | None] | None = Field(
        None, description="per candidate: P(Yes) (pointwise), or the probability that the answer names it "
                          "(constrained listwise)")
    fallback: bool = False
    answer: str | None = Field(None, description="the listwise model's answer (constrained: the label it puts first)")
