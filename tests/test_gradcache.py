"""Optimized training paths against the plain one, on the tiny real backbone with LoRA."""

import copy

import pytest
import torch
from conftest import assert_same_gradients, lora_gradients, text_records

from unime_ray.models.embedder import Embedder
from unime_ray.models.loading import load_model, load_processor
from unime_ray.training.batch import build_batch
from unime_ray.training.embedder_step import embedder_step, make_loss_fn
from unime_ray.training.gradcache import RngState, gradcache_step
from unime_ray.training.lora import LoraSettings, apply_lora


@pytest.fixture(scope="module")
def embedder_factory(checkpoints):
    processor = load_processor(checkpoints["embedder"])
    bases = {}

    def base(dropout: float):
        if dropout not in bases:
            torch.manual_seed(0)
            model = apply_lora(load_model(checkpoints["embedder"]), LoraSettings(r=4, alpha=8, dropout=dropout, dora=True))
            # Give the (zero-initialised) B matrices values, so adapter gradients are all non-trivial.
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
            bases[dropout] = model
        return bases[dropout]

    def fresh(dropout: float = 0.0):
        return Embedder(processor, copy.deepcopy(base(dropout)).train())

    return fresh


def _run(embedder, loss, chunk, dedup, hard=False):
    batch = build_batch(text_records(), None, num_negatives=3, dedup=dedup)
    value = embedder_step(embedder.encode, batch, make_loss_fn(batch, loss, 0.05, hard), chunk)
    return value.item(), lora_gradients(embedder.model), len(batch.candidates)


@pytest.mark.parametrize("loss,hard", [("soft_label", False), ("info_nce", False), ("info_nce", True)])
def test_gradcache_equals_the_plain_path(embedder_factory, loss, hard):
    plain_loss, plain_grads, _ = _run(embedder_factory(), loss, None, True, hard)
    cached_loss, cached_grads, _ = _run(embedder_factory(), loss, 3, True, hard)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert any(g.abs().sum() > 0 for g in plain_grads.values())  # non-trivial
    assert_same_gradients(plain_grads, cached_grads)


def test_dedup_encodes_fewer_candidates_with_the_same_loss_and_gradients(embedder_factory):
    dup_loss, dup_grads, dup_n = _run(embedder_factory(), "soft_label", None, False)
    dedup_loss, dedup_grads, dedup_n = _run(embedder_factory(), "soft_label", None, True)
    assert (dup_n, dedup_n) == (16, 6)  # 4 x (1 + 3) slots, 6 distinct targets
    assert dedup_loss == pytest.approx(dup_loss, rel=1e-5)
    assert_same_gradients(dup_grads, dedup_grads)


def _chunked_plain(embedder, loss, chunk, dedup, seed):
    """The reference under dropout: the same chunks as GradCache, encoded once with graphs.
    Dropout masks depend on how the items are chunked, so the one-pass plain path draws
    other masks; encoding the same chunks in the same order draws GradCache's."""
    batch = build_batch(text_records(), None, num_negatives=3, dedup=dedup)
    items = batch.queries + batch.candidates
    torch.manual_seed(seed)
    value = make_loss_fn(batch, loss, 0.05)(torch.cat([embedder.encode(items[i : i + chunk])
                                                      for i in range(0, len(items), chunk)]))
    value.backward()
    return value.item(), lora_gradients(embedder.model)


@pytest.mark.parametrize("loss,dedup", [("soft_label", True), ("soft_label", False), ("info_nce", True)])
def test_gradcache_replays_lora_dropout(embedder_factory, loss, dedup):
    reference_loss, reference_grads = _chunked_plain(embedder_factory(0.1), loss, 3, dedup, seed=1)
    batch = build_batch(text_records(), None, num_negatives=3, dedup=dedup)
    embedder = embedder_factory(0.1)
    torch.manual_seed(1)
    cached_loss = gradcache_step(embedder.encode, batch.queries + batch.candidates, make_loss_fn(batch, loss, 0.05), 3)
    assert cached_loss.item() == pytest.approx(reference_loss, rel=1e-5)
    assert_same_gradients(reference_grads, lora_gradients(embedder.model))
    # Not trivial: dropout is on, so other masks (another seed) give other gradients.
    other_loss, other_grads = _chunked_plain(embedder_factory(0.1), loss, 3, dedup, seed=2)
    assert other_loss != pytest.approx(reference_loss, rel=1e-4)
    assert any(not torch.allclose(reference_grads[n], other_grads[n], rtol=1e-3) for n in reference_grads)


def test_rng_replay_gives_identical_dropout(embedder_factory):
    torch.manual_seed(0)
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    state = RngState()
    first = dropout(x)
    with state.restored():
        again = dropout(x)
    assert torch.equal(first, again) and not torch.equal(first, dropout(x))


def test_gradient_checkpointing_gives_the_same_gradients(embedder_factory):
    plain_loss, plain_grads, _ = _run(embedder_factory(), "soft_label", None, True)
    checkpointed = embedder_factory()
    checkpointed.model.gradient_checkpointing_enable()
    checkpointed.model.enable_input_require_grads()
    assert checkpointed.model.get_base_model().model.language_model.gradient_checkpointing
    ckpt_loss, ckpt_grads, _ = _run(checkpointed, "soft_label", None, True)
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-5)
    assert_same_gradients(plain_grads, ckpt_grads)


def test_bad_records_are_skipped_with_their_reason(tmp_path):
    records = text_records()
    records[1]["query_image"] = "missing.png"
    records[2]["neg_ids"] = records[2]["neg_ids"][:1]
    batch = build_batch(records, str(tmp_path), num_negatives=3)
    assert batch.size == 2 and batch.candidate_index.shape == (2, 4) and batch.judge_scores.shape == (2, 4)
    reasons = dict(batch.skipped)
    assert "not found" in reasons["q1"] and reasons["q2"] == "1 negatives, training asks for 3"
