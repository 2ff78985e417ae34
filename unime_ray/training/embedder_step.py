"""One embedder training step: encode, loss, gradients (plain or GradCache).

``make_loss_fn`` is the single loss computation; both paths call it on the
embeddings of ``batch.queries + batch.candidates`` (queries first).
"""

from __future__ import annotations

from typing import Literal

import torch

from unime_ray.training.batch import EmbedBatch
from unime_ray.training.distributed import gather_with_local_grad, loss_scale
from unime_ray.training.gradcache import LossFn, gradcache_step, plain_step
from unime_ray.training.losses import SoftLabelLog, info_nce_loss, soft_label_kl_loss


def make_loss_fn(batch: EmbedBatch, loss: Literal["soft_label", "info_nce"], temperature: float,
                 hard_negatives: bool = False, soft_label_log: SoftLabelLog = "exact") -> LossFn:
    n = batch.size

    def loss_fn(embeddings: torch.Tensor) -> torch.Tensor:
        queries, unique = embeddings[:n], embeddings[n:]  # [n, dim], [u, dim]
        candidates = unique[batch.candidate_index.to(unique.device)]  # [n, 1 + k, dim]
        if loss == "soft_label":
            scores = torch.einsum("nd,nkd->nk", queries, candidates)  # [n, 1 + k] cosine
            return soft_label_kl_loss(scores, batch.judge_scores.to(scores.device), temperature, soft_label_log)
        # InfoNCE over the global batch: every worker's positives are negatives for all.
        negatives = gather_with_local_grad(candidates[:, 1:]) if hard_negatives else None
        global_loss = info_nce_loss(gather_with_local_grad(queries), gather_with_local_grad(candidates[:, 0]),
                                    temperature, negatives)
        return global_loss * loss_scale(gathered=True)

    return loss_fn


def embedder_step(encode, batch: EmbedBatch, loss_fn: LossFn, chunk_size: int | None) -> torch.Tensor:
    """Accumulate this batch's gradients into the model; returns the (scaled) loss."""
    items = batch.queries + batch.candidates
    if chunk_size is None:
        return plain_step(encode, items, loss_fn)
    return gradcache_step(encode, items, loss_fn, chunk_size)
