"""Embedder losses (METHOD.md section 4), pure functions on tensors.

The distributed gathering and the loss scaling that goes with it live in
``distributed.py``; these functions see plain tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_kl_loss(scores: torch.Tensor, judge_scores: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    """UniME-V2's distribution alignment: 1/2 [KL(Q||P) + KL(P||Q)], batch mean.

    scores:       [batch, 1 + k] cosine similarities of each query to its candidates
                  (positive first).
    judge_scores: [batch, 1 + k] the judge's P(Yes) for the same candidates.
    P = softmax(scores / t), Q = softmax(judge_scores / t).
    """
    if scores.shape != judge_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and judge_scores {tuple(judge_scores.shape)} differ")
    log_p = F.log_softmax(scores.float() / temperature, dim=-1)  # [batch, 1 + k]
    log_q = F.log_softmax(judge_scores.float() / temperature, dim=-1)
    kl_q_p = (log_q.exp() * (log_q - log_p)).sum(dim=-1)  # [batch]
    kl_p_q = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return 0.5 * (kl_q_p + kl_p_q).mean()


def info_nce_loss(
    query_emb: torch.Tensor,
    target_emb: torch.Tensor,
    temperature: float = 0.02,
    hard_negative_emb: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """VLM2Vec's baseline: cross-entropy of each query over in-batch targets (+ hard negatives).

    query_emb:         [batch, dim]
    target_emb:        [n_targets, dim]; query i's positive is ``target_emb[labels[i]]``
                       (default ``labels = arange(batch)``), the other rows are negatives.
    hard_negative_emb: [batch, k, dim], query i's own extra negatives.
    """
    logits = query_emb @ target_emb.T  # [batch, n_targets]
    if hard_negative_emb is not None:
        hard = torch.einsum("bd,bkd->bk", query_emb, hard_negative_emb)  # [batch, k]
        logits = torch.cat([logits, hard], dim=1)  # [batch, n_targets + k]
    if labels is None:
        labels = torch.arange(query_emb.shape[0], device=query_emb.device)
    return F.cross_entropy(logits.float() / temperature, labels)
