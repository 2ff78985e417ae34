"""The vLLM judge and the transformers judge on the same checkpoint and pairs (real engines)."""

import numpy as np
import pytest
import torch
from PIL import Image

from unime_ray.data.easyvqa import build_easyvqa_corpus
from unime_ray.data.images import load_image
from unime_ray.models.engines.scoring import build_judge, judge_prompt
from unime_ray.models.inputs import Item, encode, fit_image
from unime_ray.models.loading import load_processor

pytestmark = pytest.mark.vllm

BUDGET = {"min_pixels": 56 * 56, "max_pixels": 224 * 224}  # the tiny checkpoints' own cap is 112x112
BIG = Image.new("RGB", (2000, 2000), (30, 120, 200))


def _item(row, root):
    return Item(row["instruction"] or "", row["text"] or "", load_image(row["image"], row["image_path"], root))


@pytest.fixture(scope="module")
def pairs():
    corpus = build_easyvqa_corpus(num_images=4, seed=1)
    queries = [_item(r, corpus.image_root) for r in corpus.queries.to_pylist()[:6]]  # vqa, i2t, t2i x 2
    targets = [_item(r, corpus.image_root) for r in corpus.targets.to_pylist()[:6]]  # images and texts
    # A photo-sized image: resized to the budget (224x224 -> 8x8 tokens), not 71x71 tokens.
    return [(q, t) for q in queries for t in targets] + [(queries[0], Item("", "a big blue square", BIG))]


@pytest.fixture(scope="module")
def vllm_judge(checkpoints):
    judge = build_judge("vllm", model=checkpoints["judge"], max_model_len=512, kv_cache_gib=1, **BUDGET)
    yield judge
    judge.close()


def test_backends_agree_to_float32_precision(checkpoints, pairs, vllm_judge):
    kinds = {(q.image is not None, c.image is not None) for q, c in pairs}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    hf = build_judge("transformers", model=checkpoints["judge"], batch_size=8, max_model_len=512, **BUDGET).score(pairs)
    vl = vllm_judge.score(pairs)
    assert all(r.error is None for r in hf + vl)
    a, b = np.array([r.score for r in hf]), np.array([r.score for r in vl])
    # Same prompt strings, token ids and float32 weights; what is left is the order of float32
    # sums in vLLM's CPU kernels against torch's (2e-7 to 8e-7 measured): 2e-6 is 3x that.
    assert np.max(np.abs(a - b)) < 2e-6
    # Not trivially equal: the scores spread, so agreement is pair by pair.
    assert a.std() > 0.01
    # The 2000x2000 image reached both engines resized to the budget: 64 image tokens.
    processor = vllm_judge.processor
    assert processor._get_num_multimodal_tokens(image_sizes=[(2000, 2000)]).num_image_tokens == [64]
    # The budget's count (from sizes alone) is what the processor itself produces.
    big_pair = pairs[-1]
    encoded = encode(processor, [judge_prompt(processor, big_pair)], [big_pair[0].images() + big_pair[1].images()])
    assert hf[-1].tokens == vl[-1].tokens == encoded["input_ids"].shape[1]


def test_an_overlong_pair_fails_alone(pairs, vllm_judge):
    long_candidate = Item("", "word " * 2000)
    results = vllm_judge.score([pairs[0], (pairs[0][0], long_candidate), pairs[1]])
    assert results[0].error is None and results[2].error is None
    assert results[1].score is None and "over the token budget" in results[1].error
    assert f"limit {512 - 1}" in results[1].error and f"{results[1].tokens} tokens" in results[1].error
    assert results[1].tokens > 2000


def test_an_image_over_the_token_budget_fails_alone(checkpoints, pairs):
    # A processor that keeps 2000x2000 (5041 image tokens) against a 512-token engine.
    judge = build_judge("transformers", model=checkpoints["judge"], max_model_len=512, max_pixels=2000 * 2000)
    results = judge.score([pairs[0], pairs[-1], pairs[1]])
    assert results[0].error is None and results[2].error is None
    assert results[1].score is None and results[1].tokens > 5041 and "limit 511" in results[1].error


def test_an_image_fitted_ahead_is_what_the_processor_makes_of_the_original(checkpoints):
    """The CPU stage's resize (``fit_image``) replaces the engine processor's own: the
    processor then finds the image at size, and its pixel values are bit-identical."""
    processor = load_processor(checkpoints["judge"], **BUDGET)
    rng = np.random.default_rng(0)
    resized = 0
    for width, height in [(2000, 2000), (640, 480), (100, 300), (30, 30), (224, 224)]:
        original = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        fitted = fit_image(processor.image_processor, original)
        resized += fitted.size != original.size
        plain = processor.image_processor(images=[original], return_tensors="pt")
        ahead = processor.image_processor(images=[fitted], return_tensors="pt")
        assert torch.equal(plain["image_grid_thw"], ahead["image_grid_thw"])
        assert torch.equal(plain["pixel_values"], ahead["pixel_values"]), (width, height)
    assert resized == 4  # all but the one already at a size the budget allows


def test_constrained_listwise_agrees_across_engines(checkpoints, pairs, vllm_judge):
    from unime_ray.models.reranker import Reranker

    queries = list({id(q): q for q, _ in pairs}.values())  # vqa, i2t, t2i, with and without images
    texts = ["a red circle", "a blue square", "yes", "a green triangle"]  # one image a prompt at most
    requests = [(query, [Item("", text) for text in texts[i % 4:] + texts[: i % 4]]) for i, query in enumerate(queries)]
    hf_engine = build_judge("transformers", model=checkpoints["judge"], batch_size=8, max_model_len=512, **BUDGET)
    hf = Reranker(hf_engine, "listwise", top_n=4).rerank_batch(requests)
    vl = Reranker(vllm_judge, "listwise", top_n=4).rerank_batch(requests)
    a, b = np.array([r.scores for r in hf]), np.array([r.scores for r in vl])
    # The label tokens' log-probabilities differ as the judge's Yes/No ones do (float32 sums
    # in another order); renormalised over 4 labels a probability moves by at most that: 2e-6.
    assert np.max(np.abs(a - b)) < 2e-6
    assert [r.order for r in hf] == [r.order for r in vl]
    assert a.std() > 0.01 and any(r.order[0] != 0 for r in hf)  # not uniform, and not always the first
