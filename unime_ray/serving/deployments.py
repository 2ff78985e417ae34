"""The service's model and index deployments; the HTTP ingress composes them (``app.py``).

Default resources and autoscaling are set here; ``serve/config.yaml``'s ``deployments:``
section overrides them per deployment (replicas, ``ray_actor_options.num_gpus``, ...).
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

import numpy as np
from ray import serve

from unime_ray import metrics
from unime_ray.failures import call_isolating_failures
from unime_ray.models.inputs import Item

AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8}
WARM_UP = (Item("", "a warm-up query"), Item("", "a first candidate"), Item("", "a second candidate"))


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, autoscaling_config=AUTOSCALING)
class Embedder:
    """Items -> L2-normalised vectors; concurrent requests are embedded as one batch."""

    def __init__(self, settings: dict):
        from unime_ray.models.embedder import Embedder as Model
        from unime_ray.models.loading import set_torch_threads
        from unime_ray.serving.config import EmbedderSettings

        s = EmbedderSettings.model_validate(settings)
        set_torch_threads(s.torch_threads)
        self.model = Model.from_pretrained(s.model, s.device, s.dtype, s.min_pixels, s.max_pixels, s.format,
                                           s.pooling, s.bidirectional)
        self.embed.set_max_batch_size(s.max_batch_size)
        self.embed.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        # Serve routes no request to a replica before its constructor returns: warming here
        # keeps the first forward's one-off costs out of the first user's time limit.
        self.dim = int(self.model.embed([WARM_UP[0]]).shape[1])

    def ready(self) -> dict:
        return {"dim": self.dim}

    def _embed(self, items: Sequence[Item]) -> list[np.ndarray | str]:
        # One bad item (an image the processor refuses) fails alone, not its batch-mates.
        return [vector if error is None else error
                for vector, error in call_isolating_failures(self.model.embed, list(items))]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, items: list[Item]) -> list[np.ndarray | str]:
        """A vector per item, or the error that item raised."""
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self._embed, items)
        metrics.observe("serve_embed_batch_seconds", time.perf_counter() - started)
        return vectors


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, autoscaling_config=AUTOSCALING)
class Index:
    """FAISS over the target corpus, with each target's id, text and image reference."""

    def __init__(self, settings: dict):
        from unime_ray.serving.config import IndexSettings
        from unime_ray.serving.index import LoadedIndex

        s = IndexSettings.model_validate(settings)
        self.index = LoadedIndex(s.path, s.use_gpu)

    def search(self, vector: np.ndarray, top_k: int) -> list[dict]:
        return self.index.search(vector[None, :], top_k)[0]

    def info(self) -> dict:
        return {**self.index.meta, "path": str(self.index.path)}


@serve.deployment(ray_actor_options={"num_cpus": 1.0}, autoscaling_config=AUTOSCALING)
class Reranker:
    """``Reranker`` (listwise or pointwise) on vLLM or transformers; concurrent requests
    go to the engine as one batch."""

    def __init__(self, settings: dict):
        from unime_ray.models.settings import RerankSettings

        self.reranker = RerankSettings.model_validate(settings).build()
        self.reranker.rerank_batch([(WARM_UP[0], list(WARM_UP[1:]))])  # see Embedder.__init__

    def ready(self) -> dict:
        return {"mode": self.reranker.mode}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def rerank(self, requests: list[tuple[Item, list[Item]]]):
        started = time.perf_counter()
        rankings = await asyncio.to_thread(self.reranker.rerank_batch, requests)
        metrics.observe("serve_rerank_batch_seconds", time.perf_counter() - started)
        return rankings
