"""The retrieval service: a FastAPI ingress over the Embedder, Index and Reranker
deployments, composed with ``.bind()``; ``build_app`` is what ``serve/config.yaml`` names.

Routes: ``POST /v1/search``, ``POST /v1/embed``, ``POST /v1/rerank``, ``GET /healthz``
(the process answers), ``GET /readyz`` (every deployment of the graph answers, its model
loaded and warmed by one request). Bad input gets a 4xx whose
``error`` names the field; an item over its token or pixel budget gets its 413 or 422 here,
before it can join (and slow down) a batch of other requests. With auth on, every route
but the health checks needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve

from unime_ray import metrics
from unime_ray.data.images import ImageError, load_image
from unime_ray.models.engines.scoring import prompt_tokens
from unime_ray.models.inputs import Item, load_item
from unime_ray.serving.config import ServeAppConfig
from unime_ray.serving.deployments import AUTOSCALING, Embedder, Index, Reranker
from unime_ray.serving.schemas import (EmbedRequest, EmbedResponse, Hit, ItemIn, RerankRequest, RerankResponse,
                                       SearchRequest, SearchResponse)

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 5  # per deployment; a replica still starting does not answer in time
OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"}

api = FastAPI(title="unime-ray retrieval", version="0.1.0",
              description="Two-stage multimodal retrieval: embed -> FAISS search -> MLLM rerank.")


class BadInput(Exception):
    """A request the service refuses: ``status`` and a message that names the field."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status = status


def _error(status: int, message: str, **headers) -> JSONResponse:
    metrics.inc("serve_requests_refused")
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


@api.exception_handler(BadInput)
async def _bad_input(request: Request, error: BadInput) -> JSONResponse:
    return _error(error.status, str(error))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (an unparsable body, an unknown route) in our error shape."""
    where = "body" if error.status_code == 400 else request.url.path
    return _error(error.status_code, f"{where}: {error.detail}", **(error.headers or {}))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return _error(422, problems)


class _Access:
    """This replica's limits and expected key, set by its ``Ingress`` (one per replica process)."""

    config: ServeAppConfig | None = None
    expected: bytes = b""  # b"Bearer <key>"; empty: auth off

    @classmethod
    def configure(cls, config: ServeAppConfig) -> None:
        key = os.environ.get(config.auth.api_key_env, "")
        if config.auth.required and not key:
            raise RuntimeError(f"auth.required is set but ${config.auth.api_key_env} is empty in the replica's "
                               "environment (set it where `ray start` runs, or in the app's runtime_env)")
        cls.config, cls.expected = config, (f"Bearer {key}".encode() if key else b"")


@api.middleware("http")
async def _guard(request: Request, call_next):
    """Auth and body size, before the body is read or parsed."""
    config = _Access.config
    if config is not None and request.url.path not in OPEN_PATHS:
        supplied = request.headers.get("authorization", "").encode()
        if _Access.expected and not hmac.compare_digest(supplied, _Access.expected):  # constant time
            return _error(401, "authorization: missing or wrong API key", **{"WWW-Authenticate": "Bearer"})
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "content-length: required")
            if int(length) > config.limits.max_body_bytes:
                return _error(413, f"body: {length} bytes, the limit is {config.limits.max_body_bytes}")
    return await call_next(request)


async def _awaited(response):
    return await response


# Serve pickles the class when it is decorated: what its methods use is defined above.
@serve.deployment(ray_actor_options={"num_cpus": 0.1}, autoscaling_config=AUTOSCALING)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, embedder, index, reranker=None):
        self.config = ServeAppConfig.model_validate(config)
        self.embedder, self.index, self.reranker = embedder, index, reranker
        _Access.configure(self.config)
        from unime_ray.models.formats import resolve_input_format
        from unime_ray.models.loading import load_processor

        e = self.config.embedder
        # The embedder's own processor, pixel budget and format: items are measured as it will see them.
        self.processor = load_processor(e.model, e.min_pixels, e.max_pixels)
        self.format = resolve_input_format(e.model, e.format)

    # --- helpers -----------------------------------------------------------------------

    def _item(self, item: ItemIn, field: str) -> Item:
        if not (item.text or "").strip() and not item.image:
            raise BadInput(422, field, "needs a text or an image")
        image = None
        if item.image:
            try:
                data = base64.b64decode(item.image, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(422, f"{field}.image", "not valid base64") from None
            try:
                image = load_image(data, None, None, self.config.limits.max_image_pixels)
            except ImageError as error:
                raise BadInput(422, f"{field}.image", str(error)) from None
        item = Item(item.instruction or "", item.text or "", image)
        try:
            prepared = self.format.prepare(item)
            tokens = prompt_tokens(self.processor, self.format.text(self.processor, prepared), prepared.images(),
                                   self.format.add_special_tokens)
        except ValueError as error:  # the processor refuses the image (e.g. an aspect ratio over 200)
            raise BadInput(422, f"{field}.image", str(error)) from None
        limit = self.config.limits.max_item_tokens
        if tokens > limit:
            raise BadInput(413, field, f"{tokens} tokens (text, and image at the pixel budget), the limit is {limit}")
        return item

    async def _items(self, items: list[ItemIn], field: str) -> list[Item]:
        """Parsed and measured off the event loop: a long text takes a while to tokenize."""
        name = (lambda i: f"{field}.{i}") if len(items) > 1 or field == "items" else (lambda i: field)
        return await asyncio.to_thread(lambda: [self._item(item, name(i)) for i, item in enumerate(items)])

    async def _call(self, response, stage: str):
        """Await a deployment's response within the time limit (504 past it)."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(_awaited(response), self.config.limits.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise BadInput(504, stage, f"took longer than {self.config.limits.request_timeout_s} s") from None
        metrics.observe("serve_stage_seconds_" + stage, time.perf_counter() - started)
        return result

    async def _embed(self, items: list[Item], field: str):
        vectors = await asyncio.gather(*(self._call(self.embedder.embed.remote(item), "embed") for item in items))
        for i, vector in enumerate(vectors):
            if isinstance(vector, str):  # the model refused this item
                raise BadInput(422, field if len(items) == 1 else f"{field}.{i}", vector)
        return vectors

    def _count(self, n: int, field: str, least: int = 1) -> None:
        if not least <= n <= self.config.limits.max_items:
            raise BadInput(422, field, f"{n} given; between {least} and {self.config.limits.max_items} allowed")

    # --- routes ------------------------------------------------------------------------

    @api.get("/healthz")
    def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        """Readiness: every deployment answers. A replica answers only once its constructor
        has loaded and warmed its model, so the first request after ready runs warm."""
        calls = {"embedder": self.embedder.ready, "index": self.index.info}
        if self.reranker is not None:
            calls["reranker"] = self.reranker.ready
        answers = dict(zip(calls, await asyncio.gather(
            *(asyncio.wait_for(_awaited(call.remote()), READY_TIMEOUT_S) for call in calls.values()),
            return_exceptions=True)))
        failed = {name: f"{type(a).__name__}: {a}" if str(a) else type(a).__name__
                  for name, a in answers.items() if isinstance(a, BaseException)}
        if failed:
            return JSONResponse({"ready": False, "reason": "; ".join(f"{k}: {v}" for k, v in failed.items())}, 503)
        info = answers["index"]
        return {"ready": True, "targets": info["count"], "dim": info["dim"], "reranker": self.reranker is not None}

    @api.post("/v1/embed", response_model=EmbedResponse)
    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """Embed up to ``limits.max_items`` items (text and/or base64 image)."""
        self._count(len(request.items), "items")
        items = await self._items(request.items, "items")
        vectors = await self._embed(items, "items")
        return EmbedResponse(dim=len(vectors[0]), embeddings=[v.tolist() for v in vectors])

    @api.post("/v1/search", response_model=SearchResponse)
    async def search(self, request: SearchRequest) -> SearchResponse:
        """Top-k targets of the index for a query; with ``rerank``, the reranker reorders the
        embedder's top ``reranker.top_n`` and each hit carries both stages' ranks."""
        if not 1 <= request.top_k <= self.config.limits.max_top_k:
            raise BadInput(422, "top_k", f"{request.top_k} is outside 1..{self.config.limits.max_top_k}")
        if request.rerank and self.reranker is None:
            raise BadInput(422, "rerank", "no reranker is configured (reranker.model)")
        (query,) = await self._items([request], "query")
        (vector,) = await self._embed([query], "query")
        hits = await self._call(self.index.search.remote(vector, request.top_k), "search")
        order, reranked_order, scores, fallback = list(range(len(hits))), None, None, False
        if request.rerank:
            head = min(self.config.reranker.top_n, len(hits))
            candidates = [load_item(h["instruction"], h["text"], h["image"], self.config.index.path)
                          for h in hits[:head]]
            ranking = await self._call(self.reranker.rerank.remote((query, candidates)), "rerank")
            reranked_order, scores, fallback = ranking.order, ranking.scores, ranking.fallback
            order = reranked_order + order[head:]
        result = []
        for rank, i in enumerate(order, start=1):
            hit = hits[i]
            in_head = reranked_order is not None and i < len(reranked_order)
            result.append(Hit(id=hit["id"], text=hit["text"], image=hit["image"], dataset=hit["dataset"],
                              score=hit["score"], rank=rank, embedder_rank=i + 1,
                              reranker_rank=reranked_order.index(i) + 1 if in_head else None,
                              rerank_score=scores[i] if in_head and scores else None))
        return SearchResponse(hits=result, reranked=request.rerank, fallback=fallback)

    @api.post("/v1/rerank", response_model=RerankResponse)
    async def rerank(self, request: RerankRequest) -> RerankResponse:
        """Rerank the given candidates for a query (the reranker's first ``top_n``)."""
        if self.reranker is None:
            raise BadInput(422, "rerank", "no reranker is configured (reranker.model)")
        self._count(len(request.candidates), "candidates", least=2)
        (query,) = await self._items([request.query], "query")
        candidates = await self._items(request.candidates, "candidates")
        ranking = await self._call(self.reranker.rerank.remote((query, candidates)), "rerank")
        if ranking.error:
            raise BadInput(422, "candidates", ranking.error)
        return RerankResponse(order=ranking.order, scores=ranking.scores, fallback=ranking.fallback,
                              answer=ranking.answer)


def build_app(args: dict):
    """The application from ``serve/config.yaml``'s ``args`` (a ``ServeAppConfig``)."""
    config = ServeAppConfig.model_validate(args or {})
    reranker = Reranker.bind(config.reranker.model_dump(mode="json")) if config.reranker.model else None
    return Ingress.bind(config.model_dump(mode="json"), Embedder.bind(config.embedder.model_dump(mode="json")),
                        Index.bind(config.index.model_dump(mode="json")), reranker)
