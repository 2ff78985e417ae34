"""The paper's other backbones, Qwen2.5-VL and LLaVA-OneVision, as tiny random-weight
checkpoints through the model layer every job uses: the embedder (mining, training,
evaluation and the service embed with it, bidirectional too), the judge and the reranker
on both engines, and a training step of each trainer with LoRA on the language model only."""

import numpy as np
import pytest
import torch
from PIL import Image

from unime_ray.models.embedder import Embedder
from unime_ray.models.engines.scoring import build_judge
from unime_ray.models.inputs import Item
from unime_ray.models.loading import load_model, load_processor
from unime_ray.models.reranker import Reranker, listwise_answer, listwise_images
from unime_ray.models.tiny import build_tiny_checkpoint
from unime_ray.training.batch import EmbedBatch
from unime_ray.training.embedder_step import embedder_step, make_loss_fn
from unime_ray.training.lora import LoraSettings, apply_lora
from unime_ray.training.reranker_data import RerankerBatch, TrainingSequence
from unime_ray.training.reranker_step import reranker_step

pytestmark = pytest.mark.vllm

BUDGET = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
FAMILIES = ["qwen2_5_vl", "llava_onevision"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))


QUERY = Item("Represent the given image with the following question:", "what shape is in the image?", _image(0))
CANDIDATES = [Item("", "circle"), Item("Represent the given image.", "", _image(1)), Item("", "red triangle"),
              Item("", "blue", _image(2))]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    paths = {role: str(build_tiny_checkpoint(root / role, role, family=request.param))
             for role in ("embedder", "judge")}
    engine = build_judge("vllm", model=paths["judge"], max_model_len=1024, kv_cache_gib=1,
                         max_images_per_prompt=len(CANDIDATES) + 1, **BUDGET)
    yield request.param, paths, engine
    engine.close()


def test_the_embedder_embeds_every_kind_of_item(family):
    _, paths, _ = family
    vectors = Embedder.from_pretrained(paths["embedder"], **BUDGET).embed([QUERY, *CANDIDATES])
    assert vectors.shape == (5, 64) and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.linalg.matrix_rank(vectors, tol=1e-3) == 5  # every item its own vector


def test_the_bidirectional_embedder_masks_only_padding(family):
    """NV-Embed's bidirectional attention on this family's language model: a batch embeds as
    its items alone (padding masked), and differently from the causal model."""
    _, paths, _ = family
    bidirectional = Embedder.from_pretrained(paths["embedder"], bidirectional=True, **BUDGET)
    together = bidirectional.embed([QUERY, *CANDIDATES])
    alone = np.concatenate([bidirectional.embed([item]) for item in [QUERY, *CANDIDATES]])
    assert np.allclose(together, alone, atol=1e-5)
    causal = Embedder.from_pretrained(paths["embedder"], **BUDGET).embed([QUERY, *CANDIDATES])
    assert np.abs(together - causal).max() > 1e-2


def test_judge_and_reranker_agree_across_engines(family):
    name, paths, engine = family
    hf = build_judge("transformers", model=paths["judge"], max_model_len=1024, **BUDGET)
    pairs = [(QUERY, candidate) for candidate in CANDIDATES]
    a = np.array([r.score for r in hf.score(pairs)])
    b = np.array([r.score for r in engine.score(pairs)])
    assert np.isfinite(a).all() and np.max(np.abs(a - b)) < 2e-5, name
    assert a.std() > 1e-3  # the scores differ pair by pair: agreement is not trivial
    rankings = [Reranker(judge, top_n=4).rerank(QUERY, CANDIDATES) for judge in (hf, engine)]
    assert rankings[0].order == rankings[1].order and not any(r.fallback for r in rankings)
    assert np.allclose(rankings[0].scores, rankings[1].scores, atol=2e-5)


def _frozen_outside_language_model_lora(model) -> list[str]:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable), trainable[:5]
    return trainable


def test_a_lora_step_trains_the_language_model_only(family):
    _, paths, _ = family
    torch.manual_seed(0)
    model = apply_lora(load_model(paths["embedder"]), LoraSettings(r=4, alpha=8, dropout=0.0)).train()
    trainable = _frozen_outside_language_model_lora(model)
    embedder = Embedder(load_processor(paths["embedder"], **BUDGET), model)
    batch = EmbedBatch([QUERY, Item("", "what colour is the shape?")], CANDIDATES,
                       torch.tensor([[0, 1, 2], [3, 2, 1]]), torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.3, 0.1]]), [])
    loss = embedder_step(embedder.encode, batch, make_loss_fn(batch, "soft_label", 0.02), chunk_size=2)
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) <= set(trainable) and any(g.abs().sum() > 0 for g in grads.values())


def test_a_reranker_step_trains_the_language_model_only(family):
    _, paths, engine = family
    torch.manual_seed(0)
    model = apply_lora(load_model(paths["judge"]), LoraSettings(r=4, alpha=8, dropout=0.0)).train()
    trainable = _frozen_outside_language_model_lora(model)
    prompts = engine.prompts
    batch = RerankerBatch(
        pairs=[TrainingSequence("pair", prompts.pair(QUERY, CANDIDATES[1]), QUERY.images() + CANDIDATES[1].images(),
                                "Yes")],
        lists=[TrainingSequence("list", prompts.listing(QUERY, CANDIDATES), listwise_images(QUERY, CANDIDATES),
                                listwise_answer(2))])
    losses = reranker_step(model, load_processor(paths["judge"], **BUDGET), batch, 1.0, None)
    assert np.isfinite(losses["loss"]) and losses["loss_pair"] > 0 and losses["loss_list"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)
