"""Global retrieval with real FAISS indexes."""

import numpy as np
import pytest

from unime_ray.mining.retrieval import build_index, drop_positive, search_excluding_positive


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_drop_positive_removes_it_and_padding():
    ids, sims = drop_positive(np.array([4, 2, 7, -1]), np.array([0.9, 0.8, 0.7, 0.0]), positive=2, top_k=5)
    assert ids == [4, 7] and sims == pytest.approx([0.9, 0.7])


def test_flat_search_matches_brute_force_and_excludes_positives():
    rng = np.random.default_rng(0)
    targets, queries = _normalised(rng, 200, 16), _normalised(rng, 30, 16)
    positives = rng.integers(0, 200, size=30)
    ids, sims = search_excluding_positive(build_index(targets), queries, positives, top_k=10)
    brute = queries @ targets.T
    for q in range(30):
        order = [int(i) for i in np.argsort(-brute[q]) if i != positives[q]][:10]
        assert ids[q] == order
        assert sims[q] == pytest.approx(brute[q, order].tolist(), abs=1e-5)
        assert positives[q] not in ids[q]


def test_chunked_search_equals_one_shot():
    rng = np.random.default_rng(1)
    targets, queries = _normalised(rng, 100, 8), _normalised(rng, 25, 8)
    positives = np.arange(25)
    index = build_index(targets)
    assert search_excluding_positive(index, queries, positives, 5, chunk_size=4) == \
        search_excluding_positive(index, queries, positives, 5, chunk_size=1000)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    rng = np.random.default_rng(2)
    targets, queries = _normalised(rng, 2000, 16), _normalised(rng, 20, 16)
    positives = np.full(20, -1)
    exact, _ = search_excluding_positive(build_index(targets), queries, positives, 10)
    approx, _ = search_excluding_positive(build_index(targets, kind, nlist=16, nprobe=8), queries, positives, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.8, recall


def test_small_corpus_returns_what_exists():
    rng = np.random.default_rng(3)
    ids, _ = search_excluding_positive(build_index(_normalised(rng, 4, 8)), _normalised(rng, 2, 8), np.array([0, 1]), 50)
    assert [len(r) for r in ids] == [3, 3]
