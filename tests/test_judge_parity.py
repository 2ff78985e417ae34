"""The vLLM judge and the transformers judge on the same checkpoint and pairs (real engines)."""

import numpy as np
import pytest

from unime_ray.data.easyvqa import build_easyvqa_corpus
from unime_ray.data.images import load_image
from unime_ray.models.engines.scoring import build_judge
from unime_ray.models.inputs import Item

pytestmark = pytest.mark.vllm


def _item(row, root):
    return Item(row["instruction"] or "", row["text"] or "", load_image(row["image"], row["image_path"], root))


@pytest.fixture(scope="module")
def pairs():
    corpus = build_easyvqa_corpus(num_images=4, seed=1)
    queries = [_item(r, corpus.image_root) for r in corpus.queries.to_pylist()[:6]]  # vqa, i2t, t2i x 2
    targets = [_item(r, corpus.image_root) for r in corpus.targets.to_pylist()[:6]]  # images and texts
    return [(q, t) for q in queries for t in targets]


@pytest.fixture(scope="module")
def vllm_judge(checkpoints):
    judge = build_judge("vllm", model=checkpoints["judge"], max_model_len=512, kv_cache_gib=1,
                        engine_kwargs={"enforce_eager": True, "block_size": 32})
    yield judge
    judge.close()


def test_backends_agree_within_1e_3(checkpoints, pairs, vllm_judge):
    kinds = {(q.image is not None, c.image is not None) for q, c in pairs}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    hf = build_judge("transformers", model=checkpoints["judge"], batch_size=8).score(pairs)
    vl = vllm_judge.score(pairs)
    assert all(r.error is None for r in hf + vl)
    a, b = np.array([r.score for r in hf]), np.array([r.score for r in vl])
    assert np.max(np.abs(a - b)) < 1e-3
    # Not trivially equal: the scores spread, so agreement is pair by pair.
    assert a.std() > 0.01


def test_an_overlong_pair_fails_alone(pairs, vllm_judge):
    long_candidate = Item("", "word " * 2000)
    results = vllm_judge.score([pairs[0], (pairs[0][0], long_candidate), pairs[1]])
    assert results[0].error is None and results[2].error is None
    assert results[1].score is None and "length" in results[1].error.lower()
