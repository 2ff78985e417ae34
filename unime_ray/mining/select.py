"""Hard-negative selection rules (METHOD.md section 3), pure functions on arrays.

Candidates arrive in retrieval order with their judge scores. A rule decides which are
false negatives (dropped); cyclical sampling then picks ``k`` diverse ones from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np


Rule = Literal["beta", "relative_margin"]


def keep_below_positive(scores: np.ndarray, positive_score: float, beta: float = 0.01) -> np.ndarray:
    """UniME-V2's rule: drop a candidate with s_c > s_pos - beta. Returns the keep mask."""
    return np.asarray(scores, dtype=np.float64) <= positive_score - beta


def keep_relative_margin(scores: np.ndarray, positive_score: float, margin: float = 0.05) -> np.ndarray:
    """NV-Retriever's TopK-PercPos: drop a candidate with s_c > (1 - margin) * s_pos."""
    return np.asarray(scores, dtype=np.float64) <= (1.0 - margin) * positive_score


def cyclic_order(n: int, step: int = 5) -> list[int]:
    """0, step, 2*step, ..., then 1, 1+step, ...: every index once, spread over the list."""
    return [i for start in range(min(step, n)) for i in range(start, n, step)]


def cyclic_sample(n: int, k: int = 10, step: int = 5) -> list[int]:
    """``k`` positions out of ``n`` by cyclical sampling; repeats cyclically when n < k."""
    if n <= 0:
        raise ValueError("cyclic_sample needs at least one candidate")
    order = cyclic_order(n, step)
    return [order[i % n] for i in range(k)]


@dataclass(frozen=True)
class Selection:
    indices: list[int]  # positions in the candidate list, in selection order
    scores: list[float]  # the scores recorded with them (1.0 each on the fallback)
    dropped: int  # candidates dropped as false negatives
    fallback: bool  # True when none remained and the random fallback was used


def select_hard_negatives(
    scores: Sequence[float],
    positive_score: float,
    *,
    rule: Rule = "beta",
    beta: float = 0.01,
    margin: float = 0.05,
    k: int = 10,
    step: int = 5,
    rng: np.random.Generator | None = None,
) -> Selection:
    """Filter false negatives, then pick ``k`` by cyclical sampling (retrieval order kept).

    If every candidate is dropped (under 1% of queries in the paper), ``k`` are drawn at
    random from all candidates, each recorded with score 1.0, as UniME-V2 does.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no candidates to select from")
    if rule == "beta":
        keep = keep_below_positive(scores, positive_score, beta)
    elif rule == "relative_margin":
        keep = keep_relative_margin(scores, positive_score, margin)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    remaining = np.flatnonzero(keep)
    dropped = int(scores.size - remaining.size)
    if remaining.size == 0:
        rng = rng or np.random.default_rng(0)
        picked = rng.choice(scores.size, size=k, replace=scores.size < k).tolist()
        return Selection([int(i) for i in picked], [1.0] * k, dropped, True)
    picked = [int(remaining[i]) for i in cyclic_sample(remaining.size, k, step)]
    return Selection(picked, [float(scores[i]) for i in picked], dropped, False)
