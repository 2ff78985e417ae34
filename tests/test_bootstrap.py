"""Paired bootstrap intervals of a Precision@1 difference, on hand-checkable hits."""

import numpy as np
import pytest

from unime_ray.replication.bootstrap import overall_difference, paired_difference, paired_hits


def test_identical_models_differ_by_exactly_zero():
    hits = {"t": np.array([[1, 0, 1, 1]], float)}
    result = paired_difference(hits, hits, resamples=200)
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)


def test_every_task_weighs_the_same_and_seeds_are_averaged():
    # task "one": 1 query, a right and b wrong (+1); task "many": 3 queries, both right (0).
    a = {"one": np.array([[1.0]]), "many": np.ones((1, 3))}
    b = {"one": np.array([[0.0]]), "many": np.ones((1, 3))}
    assert overall_difference(a, b) == pytest.approx(0.5)  # (1 + 0) / 2, not 1 / 4
    # two seeds of a: hits 1/2 and 2/2 on "x" -> 0.75; b 0.25
    a2, b2 = {"x": np.array([[1, 0], [1, 1]], float)}, {"x": np.array([[0, 0], [1, 0]], float)}
    assert paired_difference(a2, b2, resamples=50)["difference"] == pytest.approx(50.0)
    certain = paired_difference({"x": np.ones((3, 5))}, {"x": np.zeros((3, 5))}, resamples=50)
    assert (certain["difference"], certain["low"], certain["high"]) == (100.0, 100.0, 100.0)


def test_interval_resolves_a_real_difference_given_enough_queries():
    rng = np.random.default_rng(1)

    def models(n):
        easy = rng.random(n)  # per-query difficulty, shared: the pairing cancels it
        return ({"t": (rng.random((3, n)) < easy + 0.05).astype(float)},
                {"t": (rng.random((3, n)) < easy - 0.05).astype(float)})

    big, small = paired_difference(*models(3000), resamples=500), paired_difference(*models(30), resamples=500)
    assert big["low"] > 0 and big["low"] < big["difference"] < big["high"]  # excludes 0, around the estimate
    assert small["low"] < 0 < small["high"]  # too few queries to tell
    assert big["high"] - big["low"] < (small["high"] - small["low"]) / 4


def test_pairs_only_queries_every_run_kept_and_refuses_mismatched_tasks():
    a_runs = [{("t", "q1"): True, ("t", "q2"): False}, {("t", "q1"): True, ("t", "q2"): True}]
    b_runs = [{("t", "q1"): False, ("t", "q3"): True}]  # q2 rejected in b's run, q3 in a's
    a, b = paired_hits(a_runs, b_runs)
    assert a["t"].tolist() == [[1.0], [1.0]] and b["t"].tolist() == [[0.0]]
    with pytest.raises(ValueError, match="different tasks"):
        paired_difference({"t": np.ones((1, 2))}, {"u": np.ones((1, 2))})
