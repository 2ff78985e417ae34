"""Selection rules on hand-checked cases (METHOD.md section 3)."""

import numpy as np
import pytest

from unime_ray.rng import seeded_rng
from unime_ray.mining.select import (
    cyclic_order,
    cyclic_sample,
    keep_below_positive,
    keep_relative_margin,
    select_hard_negatives,
)


def test_beta_rule_drops_candidates_within_beta_of_the_positive():
    # s_pos = 0.80, beta = 0.01: keep s_c <= 0.79.
    keep = keep_below_positive(np.array([0.95, 0.80, 0.795, 0.79, 0.10]), 0.80, beta=0.01)
    assert keep.tolist() == [False, False, False, True, True]


def test_relative_margin_rule():
    # (1 - 0.1) * 0.8 = 0.72: keep s_c <= 0.72.
    keep = keep_relative_margin(np.array([0.75, 0.72, 0.5]), 0.8, margin=0.1)
    assert keep.tolist() == [False, True, True]


def test_cyclic_order_steps_through_the_list():
    assert cyclic_order(12, step=5) == [0, 5, 10, 1, 6, 11, 2, 7, 3, 8, 4, 9]
    assert cyclic_order(3, step=5) == [0, 1, 2]


def test_cyclic_sample_takes_k_in_stepped_order():
    assert cyclic_sample(50, k=10, step=5) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert cyclic_sample(12, k=10, step=5) == [0, 5, 10, 1, 6, 11, 2, 7, 3, 8]


def test_cyclic_sample_repeats_when_fewer_than_k_remain():
    assert cyclic_sample(2, k=5) == [0, 1, 0, 1, 0]  # A, B, A, B, ...
    with pytest.raises(ValueError):
        cyclic_sample(0, k=3)


def test_select_keeps_retrieval_order_and_never_returns_a_false_negative():
    scores = [0.9, 0.2, 0.85, 0.3, 0.1, 0.4, 0.05]
    pick = select_hard_negatives(scores, positive_score=0.8, beta=0.01, k=3, step=2)
    # Dropped: 0.9 and 0.85 (>= 0.79). Remaining positions 1, 3, 4, 5, 6; stepped order
    # over those five is [0, 2, 4, 1, 3] -> candidates 1, 4, 6.
    assert pick.indices == [1, 4, 6]
    assert pick.scores == [0.2, 0.1, 0.05]
    assert pick.dropped == 2 and not pick.fallback
    assert all(s <= 0.8 - 0.01 for s in pick.scores)


def test_select_falls_back_to_random_candidates_with_score_one():
    scores = [0.99, 0.98, 0.97, 0.96]
    pick = select_hard_negatives(scores, positive_score=0.5, k=3, rng=seeded_rng("q1", 0))
    assert pick.fallback and pick.dropped == 4
    assert pick.scores == [1.0, 1.0, 1.0]
    assert len(set(pick.indices)) == 3 and all(0 <= i < 4 for i in pick.indices)
    again = select_hard_negatives(scores, positive_score=0.5, k=3, rng=seeded_rng("q1", 0))
    assert again.indices == pick.indices  # seeded by query id: reruns agree


def test_fallback_with_fewer_candidates_than_k_draws_with_replacement():
    pick = select_hard_negatives([0.9, 0.95], positive_score=0.1, k=5, rng=seeded_rng("q", 0))
    assert pick.fallback and len(pick.indices) == 5 and set(pick.indices) <= {0, 1}


def test_relative_margin_selection_differs_from_beta_on_the_same_scores():
    scores = [0.75, 0.6, 0.3]
    beta = select_hard_negatives(scores, 0.8, rule="beta", beta=0.01, k=2)
    margin = select_hard_negatives(scores, 0.8, rule="relative_margin", margin=0.2, k=2)
    assert beta.indices == [0, 1]  # 0.75 <= 0.79 is kept by beta
    assert margin.indices == [1, 2]  # 0.75 > 0.64 is dropped by the margin


def test_seeded_rng_differs_by_key():
    assert seeded_rng("a", 0).integers(1 << 30) != seeded_rng("b", 0).integers(1 << 30)
