"""Embedder losses against hand-computed values (METHOD.md section 4)."""

import math

import pytest
import torch

from unime_ray.training.losses import info_nce_loss, soft_label_kl_loss


def test_soft_label_kl_hand_value():
    # t = 1: P = softmax([0, ln 3]) = [1/4, 3/4], Q = softmax([0, 0]) = [1/2, 1/2]
    scores = torch.tensor([[0.0, math.log(3)]])
    judge = torch.tensor([[0.0, 0.0]])
    kl_qp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl_pq = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert soft_label_kl_loss(scores, judge, temperature=1.0).item() == pytest.approx(0.5 * (kl_qp + kl_pq), rel=1e-6)


def test_soft_label_kl_is_zero_at_equality_symmetric_and_a_batch_mean():
    torch.manual_seed(0)
    a, b = torch.rand(4, 9), torch.rand(4, 9)
    assert soft_label_kl_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_label_kl_loss(a, b).item() == pytest.approx(soft_label_kl_loss(b, a).item(), rel=1e-5)
    assert soft_label_kl_loss(a, b).item() > 0.01  # not trivially zero
    rows = [soft_label_kl_loss(a[i : i + 1], b[i : i + 1]).item() for i in range(4)]
    assert soft_label_kl_loss(a, b).item() == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_soft_label_kl_public_form_hand_value():
    # t = 1: P = softmax([0, 0]) = [1/2, 1/2], Q = softmax([0, -100]) = [1, e^-100] to float precision.
    scores, judge = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -100.0]])
    # exact: KL(Q||P) = ln 2, KL(P||Q) = 1/2 ln(1/2) + 1/2 (ln(1/2) + 100) = 50 - ln 2
    assert soft_label_kl_loss(scores, judge, 1.0).item() == pytest.approx(25.0, rel=1e-5)
    # public: KL(Q||P) = -ln(1/2 + 1e-8) ~ ln 2; KL(P||Q) = 1/2 (ln 1/2 - ln 1) + 1/2 (ln 1/2 - ln 1e-8)
    expected = 0.5 * (-math.log(0.5 + 1e-8) + math.log(0.5) - 0.5 * math.log(1 + 1e-8) - 0.5 * math.log(1e-8))
    assert expected == pytest.approx(0.25 * math.log(1e8), rel=1e-6)
    assert soft_label_kl_loss(scores, judge, 1.0, "public").item() == pytest.approx(expected, rel=1e-5)


def test_soft_label_kl_public_form_matches_exact_where_no_probability_is_tiny():
    a, b = torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[0.6, 0.5, 0.4]])
    assert soft_label_kl_loss(a, b, 1.0, "public").item() == pytest.approx(soft_label_kl_loss(a, b, 1.0).item(),
                                                                          rel=1e-5)
    with pytest.raises(ValueError, match="log_form"):
        soft_label_kl_loss(a, b, 1.0, "approximate")


def test_soft_label_kl_temperature_sharpens():
    a, b = torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[0.6, 0.5, 0.4]])
    assert soft_label_kl_loss(a, b, 0.02) > soft_label_kl_loss(a, b, 1.0)


def test_soft_label_kl_gradients_are_finite_and_pull_p_towards_q():
    scores = torch.tensor([[0.2, 0.8, 0.1]], requires_grad=True)
    judge = torch.tensor([[0.9, 0.1, 0.1]])
    soft_label_kl_loss(scores, judge, 0.1).backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 0] < 0 and scores.grad[0, 1] > 0  # raise the positive, lower the over-scored one


def test_soft_label_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        soft_label_kl_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_info_nce_hand_value_and_hard_negatives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # row logits [1, 0] / 1: CE = -log(e / (e + 1))
    expected = -math.log(math.e / (math.e + 1))
    assert info_nce_loss(q, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    hard = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # each query's hard negative scores 0 with it
    with_hard = -math.log(math.e / (math.e + 2))
    assert info_nce_loss(q, t, 1.0, hard_negative_emb=hard).item() == pytest.approx(with_hard, rel=1e-6)


def test_info_nce_labels_select_positives_among_gathered_targets():
    q = torch.tensor([[0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert info_nce_loss(q, t, 1.0, labels=torch.tensor([1])) < info_nce_loss(q, t, 1.0, labels=torch.tensor([0]))
    loss = info_nce_loss(q.requires_grad_(), t, 0.02, labels=torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(q.grad).all()
