"""Retrieval metrics of the MMEB protocol, pure functions on score matrices.

Every query ranks its own candidate list, gold first in the file (index 0). Two rules for
Precision@1 stand side by side:

- ``precision_at_1`` (ours, strict): a tie with the gold counts against it, so a model that
  scores every candidate alike gets no credit;
- ``precision_at_1_mmeb``: MMEB's own, VLM2Vec's ``argmax``, where the first index wins a
  tie. On a gold-first list a collapsed model scores perfect under it.

They differ exactly on the queries whose gold ties for the top score with another
candidate (``tied_at_top`` per task). A candidate that is the gold's own item again (the
same text and image: MMEB embeds it once, so it scores the gold's score) is the gold, not
a rival, under both rules; other duplicates count as separate entries, as in MMEB.
"""

from __future__ import annotations

from statistics import fmean
from typing import Mapping, Sequence

import numpy as np

# "other": a user's task with no declared meta-task.
META_TASKS = ("classification", "vqa", "retrieval", "grounding", "other")


def _gold_and_rivals(scores: np.ndarray, gold: int, same_as_gold: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """([n, 1] gold scores, [n, C] mask of the candidates that compete with the gold)."""
    scores = np.asarray(scores, dtype=np.float64)
    rivals = np.ones(scores.shape, dtype=bool)
    rivals[:, gold] = False
    if same_as_gold is not None:
        rivals &= ~np.asarray(same_as_gold, dtype=bool)
    return scores[:, gold : gold + 1], rivals


def gold_ranks(scores: np.ndarray, gold: int = 0, same_as_gold: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of the gold candidate in each row of ``scores`` [queries, candidates]:
    the number of rivals scoring higher or equal. ``same_as_gold`` [queries, candidates]
    marks repeats of the gold's own item, which are not rivals."""
    gold_scores, rivals = _gold_and_rivals(scores, gold, same_as_gold)
    return ((np.asarray(scores) >= gold_scores) & rivals).sum(axis=1)


def gold_ties(scores: np.ndarray, gold: int = 0, same_as_gold: np.ndarray | None = None) -> np.ndarray:
    """The number of rivals scoring exactly the gold's score, per row."""
    gold_scores, rivals = _gold_and_rivals(scores, gold, same_as_gold)
    return ((np.asarray(scores) == gold_scores) & rivals).sum(axis=1)


def ranks_from_orders(orders: Sequence[Sequence[int]], gold: int = 0) -> np.ndarray:
    """0-based rank of the gold in each explicit order (a reranker's output)."""
    return np.array([list(order).index(gold) for order in orders], dtype=np.int64)


def precision_at_1(ranks: np.ndarray) -> float:
    return float(np.mean(np.asarray(ranks) == 0)) if len(ranks) else float("nan")


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """With one gold per query, the share of queries whose gold is in the top k."""
    return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else float("nan")


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks) + 1.0))) if len(ranks) else float("nan")


def argmax_hits(ranks: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """MMEB's rule: the gold is picked when no rival scores strictly above it."""
    return np.asarray(ranks) - np.asarray(ties) == 0


def task_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10), ties: np.ndarray | None = None) -> dict:
    """A task's metrics; None for a task left with no queries (it is not averaged). ``ties``
    (``gold_ties``) default to none, as for a reranker's explicit order."""
    ranks = np.asarray(ranks)
    ties = np.zeros_like(ranks) if ties is None else np.asarray(ties)
    hits = argmax_hits(ranks, ties)
    values = {"precision_at_1": precision_at_1(ranks), **{f"recall_at_{k}": recall_at_k(ranks, k) for k in ks},
              "mrr": mean_reciprocal_rank(ranks),
              "precision_at_1_mmeb": float(np.mean(hits)) if len(ranks) else float("nan")}
    return {**{k: (v if len(ranks) else None) for k, v in values.items()}, "n": int(len(ranks)),
            "tied_at_top": int(np.sum(hits & (ties > 0)))}


def aggregate(tasks: Mapping[str, dict], metric: str = "precision_at_1") -> tuple[dict, float | None]:
    """Per meta-task means of the tasks' ``metric`` and the overall mean over tasks, as
    MMEB reports them (every task weighs the same, whatever its size)."""
    scored = [t for t in tasks.values() if t.get(metric) is not None]
    meta: dict[str, float] = {}
    for name in META_TASKS:
        values = [t[metric] for t in scored if t["meta_task"] == name]
        if values:
            meta[name] = fmean(values)
    return meta, (fmean(t[metric] for t in scored) if scored else None)
