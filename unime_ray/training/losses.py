"""Embedder losses (METHOD.md section 4), pure functions on tensors.

The distributed gathering and the loss scaling that goes with it live in
``distributed.py``; these functions see plain tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


SoftLabelLog = Literal["exact", "public"]
PUBLIC_EPSILON = 1e-8  # UniME-V2's public loss adds it to each softmax before the log


def soft_label_kl_loss(scores: torch.Tensor, judge_scores: torch.Tensor, temperature: float = 0.02,
                       log_form: SoftLabelLog = "exact") -> torch.Tensor:
    """UniME-V2's distribution alignment: 1/2 [KL(Q||P) + KL(P||Q)], batch mean.

    scores:       [batch, 1 + k] cosine similarities of each query to its candidates
                  (positive first).
    judge_scores: [batch, 1 + k] the judge's P(Yes) for the same candidates.
    P = softmax(scores / t), Q = softmax(judge_scores / t).

    ``log_form``: ``exact`` takes log P and log Q as log-softmaxes; ``public`` is the
    published code's form, KL(A||B) = sum A (log A - log(B + 1e-8)) with A's own log exact
    (``F.kl_div``'s target term). At tau = 0.02 a judge gap of 0.5 makes Q ~ e^-25 on a
    negative; the epsilon caps -log(Q + 1e-8) at 18.4, so the public KL(P||Q) pushes far
    less on candidates the judge rules out.
    """
    if scores.shape != judge_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and judge_scores {tuple(judge_scores.shape)} differ")
    log_p = F.log_softmax(scores.float() / temperature, dim=-1)  # [batch, 1 + k]
    log_q = F.log_softmax(judge_scores.float() / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    if log_form == "exact":
        kl_q_p = (q * (log_q - log_p)).sum(dim=-1)  # [batch]
        kl_p_q = (p * (log_p - log_q)).sum(dim=-1)
    elif log_form == "public":
        kl_q_p = (torch.xlogy(q, q) - q * torch.log(p + PUBLIC_EPSILON)).sum(dim=-1)
        kl_p_q = (torch.xlogy(p, p) - p * torch.log(q + PUBLIC_EPSILON)).sum(dim=-1)
    else:
        raise ValueError(f"log_form must be 'exact' or 'public', got {log_form!r}")
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
