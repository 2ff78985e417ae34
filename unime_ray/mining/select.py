"""Hard-negative selection rules (METHOD.md section 3), pure functions on arrays.

Candidates arrive in retrieval order with their judge scores. A rule decides which are
false negatives (dropped); cyclical sampling then picks ``k`` diverse ones from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np


Rule = Literal["beta", "relative_margin", "absolute_margin", "score_window", "rank_window", "adaptive_margin"]
Modality = Literal["any", "target", "mixed"]
ITEM_MODALITIES = ("text", "image", "text+image")


def keep_below_positive(scores: np.ndarray, positive_score: float, beta: float = 0.01) -> np.ndarray:
    """An absolute margin under the positive (UniME-V2's beta rule; the text miners'
    ``absolute_margin``): drop a candidate with s_c > s_pos - beta. Returns the keep mask."""
    return np.asarray(scores, dtype=np.float64) <= positive_score - beta


def keep_relative_margin(scores: np.ndarray, positive_score: float, margin: float = 0.05) -> np.ndarray:
    """NV-Retriever's TopK-PercPos: drop a candidate with s_c > (1 - margin) * s_pos."""
    return np.asarray(scores, dtype=np.float64) <= (1.0 - margin) * positive_score


def keep_score_window(scores: np.ndarray, min_score: float, max_score: float) -> np.ndarray:
    """sentence-transformers' ``min_score``/``max_score``: keep min_score <= s_c <= max_score,
    whatever the positive scored."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores >= min_score) & (scores <= max_score)


def keep_rank_window(ranks: Sequence[int], range_min: int, range_max: int | None) -> np.ndarray:
    """sentence-transformers' ``range_min``/``range_max``: keep candidates whose retrieval rank
    (0 = the embedder's nearest) is in [range_min, range_max); skips the nearest, which are
    the likeliest false negatives, without reading the judge."""
    ranks = np.asarray(ranks, dtype=np.int64)
    return (ranks >= range_min) & (ranks < (np.iinfo(np.int64).max if range_max is None else range_max))


def keep_adaptive_margin(scores: np.ndarray, positive_score: float, positive_sims: Sequence[float],
                         base: float = 0.01, scale: float = 0.2) -> np.ndarray:
    """An adaptive margin (after LG-ANNA): each candidate's margin under the positive grows
    with its embedding similarity to the positive, m_c = base + scale * max(0, sim(c, p));
    drop s_c > s_pos - m_c. A candidate close to the positive must score clearly below it
    to count as a negative; a distant one needs only ``base`` (the beta rule's margin)."""
    sims = np.asarray(positive_sims, dtype=np.float64)
    return np.asarray(scores, dtype=np.float64) <= positive_score - (base + scale * np.maximum(sims, 0.0))


def item_modality(text: str | None, has_image: bool) -> str:
    """An item's modality: "text", "image" or "text+image" (instructions are not content)."""
    if text and has_image:
        return "text+image"
    return "image" if has_image else "text"


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


def _interleave(same: list[int], other: list[int]) -> list[int]:
    """``other``'s picks spread evenly among ``same``'s (Bresenham), so that training on the
    first n negatives keeps about the same share of each."""
    k, n_other = len(same) + len(other), len(other)
    same_iter, other_iter = iter(same), iter(other)
    return [next(other_iter) if (i + 1) * n_other // k > i * n_other // k else next(same_iter) for i in range(k)]


def select_hard_negatives(
    scores: Sequence[float],
    positive_score: float,
    *,
    rule: Rule = "beta",
    beta: float = 0.01,
    margin: float = 0.05,
    absolute_margin: float = 0.1,
    min_score: float = 0.0,
    max_score: float = 0.5,
    range_min: int = 5,
    range_max: int | None = None,
    ranks: Sequence[int] | None = None,
    positive_sims: Sequence[float] | None = None,
    adaptive_base: float = 0.01,
    adaptive_scale: float = 0.2,
    modality: Modality = "any",
    modalities: Sequence[str] | None = None,
    positive_modality: str | None = None,
    other_modality_share: float = 0.2,
    k: int = 10,
    step: int = 5,
    rng: np.random.Generator | None = None,
) -> Selection:
    """Filter false negatives by ``rule``, then by modality, then pick ``k`` by cyclical
    sampling (retrieval order kept). ``ranks`` are the candidates' retrieval ranks
    (default: their positions); ``positive_sims`` their embedding similarities to the
    positive (``adaptive_margin``); ``modalities`` each candidate's and ``positive_modality``
    the positive's (``item_modality``), needed unless ``modality="any"``.

    Modality (MM-Embed): ``target`` keeps only candidates of the positive's modality;
    ``mixed`` picks ``other_modality_share * k`` (rounded half up) of the k among the other modalities
    (all k from one side when the other has none left) and spreads them through the list.

    If every candidate is dropped (under 1% of queries in the paper), ``k`` are drawn at
    random, each recorded with score 1.0, as UniME-V2 does: from the candidates of the
    positive's modality under ``target`` (all, if none is), else from all candidates.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no candidates to select from")
    if rule in ("beta", "absolute_margin"):
        keep = keep_below_positive(scores, positive_score, beta if rule == "beta" else absolute_margin)
    elif rule == "relative_margin":
        keep = keep_relative_margin(scores, positive_score, margin)
    elif rule == "score_window":
        keep = keep_score_window(scores, min_score, max_score)
    elif rule == "rank_window":
        keep = keep_rank_window(np.arange(scores.size) if ranks is None else ranks, range_min, range_max)
    elif rule == "adaptive_margin":
        if positive_sims is None:
            raise ValueError("rule='adaptive_margin' needs the candidates' similarities to the positive")
        keep = keep_adaptive_margin(scores, positive_score, positive_sims, adaptive_base, adaptive_scale)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    dropped = int(scores.size - keep.sum())
    if modality == "any":
        same_kind = np.ones(scores.size, dtype=bool)
    elif modalities is None or positive_modality is None:
        raise ValueError(f"modality={modality!r} needs the candidates' and the positive's modalities")
    else:
        same_kind = np.asarray(modalities) == positive_modality
    same = np.flatnonzero(keep & same_kind).tolist()
    other = np.flatnonzero(keep & ~same_kind).tolist() if modality == "mixed" else []
    if not same and not other:
        pool = np.flatnonzero(same_kind) if modality == "target" and same_kind.any() else np.arange(scores.size)
        rng = rng or np.random.default_rng(0)
        picked = rng.choice(pool, size=k, replace=pool.size < k).tolist()
        return Selection([int(i) for i in picked], [1.0] * k, dropped, True)
    n_other = k if not same else 0 if not other else int(other_modality_share * k + 0.5)
    pick = lambda pool, n: [pool[i] for i in cyclic_sample(len(pool), n, step)] if n else []  # noqa: E731
    picked = _interleave(pick(same, k - n_other), pick(other, n_other))
    return Selection(picked, [float(scores[i]) for i in picked], dropped, False)
