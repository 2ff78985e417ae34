"""Selection rules on hand-checked cases (METHOD.md section 3)."""

import numpy as np
import pytest

from unime_ray.rng import seeded_rng
from unime_ray.mining.select import (
    cyclic_order,
    cyclic_sample,
    item_modality,
    keep_adaptive_margin,
    keep_below_positive,
    keep_rank_window,
    keep_relative_margin,
    keep_score_window,
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


def test_absolute_margin_is_the_beta_rule_with_its_own_margin():
    scores = [0.75, 0.69, 0.3]
    assert select_hard_negatives(scores, 0.8, rule="absolute_margin", absolute_margin=0.1, k=2).indices == [1, 2]
    assert select_hard_negatives(scores, 0.8, rule="beta", beta=0.01, k=2).indices == [0, 1]  # same scores


def test_score_window_ignores_the_positive():
    keep = keep_score_window(np.array([0.9, 0.5, 0.3, 0.1, 0.0]), min_score=0.1, max_score=0.5)
    assert keep.tolist() == [False, True, True, True, False]
    pick = select_hard_negatives([0.9, 0.5, 0.3, 0.05], positive_score=0.2, rule="score_window", min_score=0.1,
                                 max_score=0.5, k=2, step=1)
    assert pick.indices == [1, 2] and pick.dropped == 2  # 0.5 and 0.3 exceed s_pos: kept all the same


def test_rank_window_counts_retrieval_ranks_not_positions():
    assert keep_rank_window([0, 1, 2, 3, 4], range_min=2, range_max=4).tolist() == [False, False, True, True, False]
    assert keep_rank_window([0, 7], range_min=1, range_max=None).tolist() == [False, True]
    # Candidate at rank 1 failed to be judged: the judged ones are ranks 0, 2, 3.
    pick = select_hard_negatives([0.1, 0.2, 0.3], 0.9, rule="rank_window", range_min=2, ranks=[0, 2, 3], k=2, step=1)
    assert pick.indices == [1, 2] and pick.scores == [0.2, 0.3] and pick.dropped == 1


def test_adaptive_margin_grows_with_the_candidates_similarity_to_the_positive():
    # s_pos = 0.9, base 0.05, scale 0.2: margins 0.05 (cos -0.5, clipped to 0), 0.15 (cos 0.5), 0.25 (cos 1),
    # so thresholds 0.85, 0.75 and 0.65: one score under and one over each.
    keep = keep_adaptive_margin(np.array([0.84, 0.86, 0.74, 0.76, 0.64, 0.66]), 0.9,
                                [-0.5, -0.5, 0.5, 0.5, 1.0, 1.0], base=0.05, scale=0.2)
    assert keep.tolist() == [True, False, True, False, True, False]
    scores, sims = [0.7, 0.7, 0.3], [0.9, 0.1, 0.95]
    pick = select_hard_negatives(scores, 0.9, rule="adaptive_margin", positive_sims=sims, adaptive_base=0.01,
                                 adaptive_scale=0.2, k=2, step=1)
    # Margins 0.01 + 0.2 x 0.9 = 0.19 and 0.03: 0.7 <= 0.71 and 0.7 <= 0.87, both kept ...
    assert pick.indices == [0, 1] and pick.dropped == 0
    # ... a scale of 0.3 drops the first (0.7 > 0.9 - 0.28), not the second (0.7 <= 0.9 - 0.04).
    tighter = select_hard_negatives(scores, 0.9, rule="adaptive_margin", positive_sims=sims, adaptive_base=0.01,
                                    adaptive_scale=0.3, k=2, step=1)
    assert tighter.indices == [1, 2] and tighter.dropped == 1
    assert select_hard_negatives(scores, 0.9, rule="beta", k=2, step=1).indices == [0, 1]  # the beta rule keeps it
    with pytest.raises(ValueError, match="similarities"):
        select_hard_negatives(scores, 0.9, rule="adaptive_margin", k=2)


def test_window_bounds_are_checked_when_the_config_is_parsed():
    from unime_ray.mining.config import SelectConfig

    with pytest.raises(ValueError, match="min_score"):
        SelectConfig(rule="score_window", min_score=0.6, max_score=0.4)
    with pytest.raises(ValueError, match="range_max"):
        SelectConfig(rule="rank_window", range_min=5, range_max=5)
    with pytest.raises(ValueError):
        SelectConfig(modality="image")


def test_item_modality():
    assert [item_modality("a cat", False), item_modality("", True), item_modality(None, True),
            item_modality("a cat", True), item_modality(None, False)] == ["text", "image", "image", "text+image", "text"]


# Candidates in retrieval order: their modalities and scores; the positive is an image.
MODALITIES = ["text", "image", "text", "image", "text+image", "image", "text", "image"]
SCORES = [0.3, 0.95, 0.2, 0.4, 0.1, 0.3, 0.2, 0.1]


def test_target_modality_keeps_only_the_positives_modality_after_the_rule():
    pick = select_hard_negatives(SCORES, 0.9, modality="target", modalities=MODALITIES, positive_modality="image",
                                 k=3, step=1)
    # Image candidates 1, 3, 5, 7; 1 (0.95) is a false negative: 3, 5, 7 in retrieval order.
    assert pick.indices == [3, 5, 7] and pick.dropped == 1 and not pick.fallback
    anything = select_hard_negatives(SCORES, 0.9, k=3, step=1)
    assert anything.indices == [0, 2, 3]  # without the filter, texts come first


def test_mixed_modality_takes_its_share_from_the_other_modalities_spread_through_the_list():
    pick = select_hard_negatives(SCORES, 0.9, modality="mixed", modalities=MODALITIES, positive_modality="image",
                                 other_modality_share=0.4, k=5, step=1)
    # 0.4 x 5 = 2 others (0, 2: the first texts), 3 images (3, 5, 7); the others at slots
    # 2 and 4 (slot i when floor((i + 1) x 2/5) steps up), the positive's modality first.
    assert pick.indices == [3, 5, 0, 7, 2]
    assert [MODALITIES[i] for i in pick.indices].count("image") == 3
    # No other modality left: all k from the positive's; none of the positive's: all from the others.
    only_images = select_hard_negatives([0.1, 0.2], 0.9, modality="mixed", modalities=["image", "image"],
                                        positive_modality="image", other_modality_share=0.5, k=4, step=1)
    assert only_images.indices == [0, 1, 0, 1]
    only_texts = select_hard_negatives([0.1, 0.2], 0.9, modality="mixed", modalities=["text", "text"],
                                       positive_modality="image", other_modality_share=0.5, k=3, step=1)
    assert only_texts.indices == [0, 1, 0]


def test_target_modality_falls_back_among_the_positives_modality():
    pick = select_hard_negatives([0.99, 0.1, 0.98], 0.5, modality="target", modalities=["image", "text", "image"],
                                 positive_modality="image", k=4, rng=seeded_rng("q", 0))
    assert pick.fallback and set(pick.indices) <= {0, 2} and pick.scores == [1.0] * 4
    with pytest.raises(ValueError, match="modalities"):
        select_hard_negatives([0.1], 0.5, modality="target", k=1)


def test_the_selection_stage_reads_each_candidates_modality_from_its_row(tmp_path):
    from unime_ray.mining.config import SelectConfig
    from unime_ray.mining.select_stage import select_record

    ids = ["img:pos", "ans:red", "img:a", "pair:b", "img:c"]  # the positive, then candidates in retrieval order
    row = {"id": "q", "dataset": "d", "instruction": "Find the image.", "text": "a red circle", "image": None,
           "image_path": None, "error": None, "positive_score": 0.9, "candidate_scores": [0.1, 0.2, 0.3, None],
           "target_ids": ids, "target_instructions": [None] * 5,
           "target_texts": [None, "red", None, "a caption", None],
           "target_images": [None, None, b"png", None, None],
           "target_image_paths": ["p.png", None, None, "b.png", "c.png"]}
    pick = select_record(row, SelectConfig(modality="target", k=2, step=1), str(tmp_path))
    # Images: img:a (bytes) and img:c (a path; not judged: left out); pair:b is text+image.
    assert pick["neg_ids"] == ["img:a", "img:a"] and pick["pairs_failed"] == 1
    assert select_record(row, SelectConfig(k=3, step=1), str(tmp_path))["neg_ids"] == ["ans:red", "img:a", "pair:b"]


def test_the_selection_stage_reads_similarities_to_the_positive_and_names_a_positive_without_one(tmp_path):
    from unime_ray.mining.config import SelectConfig
    from unime_ray.mining.select_stage import select_record

    ids = ["img:pos", "img:a", "img:b", "img:c"]
    row = {"id": "q", "dataset": "d", "instruction": None, "text": "a red circle", "image": None, "image_path": None,
           "error": None, "positive_score": 0.9, "candidate_scores": [0.7, None, 0.7], "target_ids": ids,
           "target_instructions": [None] * 4, "target_texts": [None] * 4, "target_images": [None] * 4,
           "target_image_paths": ["p.png", "a.png", "b.png", "c.png"], "candidate_positive_sims": [0.95, None, 0.1]}
    config = SelectConfig(rule="adaptive_margin", adaptive_scale=0.3, k=2, step=1)
    pick = select_record(row, config, str(tmp_path))
    # img:a is close to the positive (margin 0.295): dropped; img:b was not judged; img:c kept.
    assert pick["neg_ids"] == ["img:c", "img:c"] and pick["false_negatives_dropped"] == 1
    unembedded = select_record({**row, "candidate_positive_sims": [None, None, None]}, config, str(tmp_path))
    assert "img:pos" in unembedded["error"] and "no embedding" in unembedded["error"]
    one_unmeasured = select_record({**row, "candidate_positive_sims": [0.95, None, None]}, config, str(tmp_path))
    assert "img:c" in one_unmeasured["error"] and "img:a" not in one_unmeasured["error"]
