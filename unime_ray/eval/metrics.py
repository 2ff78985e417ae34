"""Retrieval metrics of the MMEB protocol, pure functions on score matrices.

Every query ranks its own candidate list, gold first in the file (index 0). A tie with
the gold counts against it: a model that scores every candidate alike gets no credit,
whereas ``argmax`` would pick index 0, the gold, and score it perfect.
"""

from __future__ import annotations

from statistics import fmean
from typing import Mapping, Sequence

import numpy as np

META_TASKS = ("classification", "vqa", "retrieval", "grounding")


def gold_ranks(scores: np.ndarray, gold: int = 0) -> np.ndarray:
    """0-based rank of the gold candidate in each row of ``scores`` [queries, candidates]:
    the number of other candidates scoring higher or equal."""
    scores = np.asarray(scores, dtype=np.float64)
    gold_scores = scores[:, gold : gold + 1]  # [n, 1]
    others = np.ones(scores.shape[1], dtype=bool)
    others[gold] = False
    return (scores[:, others] >= gold_scores).sum(axis=1)


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


def task_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict:
    """A task's metrics; None for a task left with no queries (it is not averaged)."""
    values = {"precision_at_1": precision_at_1(ranks), **{f"recall_at_{k}": recall_at_k(ranks, k) for k in ks},
              "mrr": mean_reciprocal_rank(ranks)}
    return {**{k: (v if len(ranks) else None) for k, v in values.items()}, "n": int(len(ranks))}


def aggregate(tasks: Mapping[str, dict], metric: str = "precision_at_1") -> tuple[dict, float | None]:
    """Per meta-task means of the tasks' ``metric`` and the overall mean over tasks, as
    MMEB reports them (every task weighs the same, whatever its size)."""
    scored = [t for t in tasks.values() if t[metric] is not None]
    meta: dict[str, float] = {}
    for name in META_TASKS:
        values = [t[metric] for t in scored if t["meta_task"] == name]
        if values:
            meta[name] = fmean(values)
    return meta, (fmean(t[metric] for t in scored) if scored else None)
