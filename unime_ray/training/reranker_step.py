"""One reranker training step: L = L_pair + w * L_list, next-token cross-entropy on the
answer tokens (METHOD.md section 5).

Each loss is the mean over its answer tokens in this worker's batch. With
``micro_batch_size`` the sequences go through the model a few at a time; each
micro-batch's summed loss is divided by the whole batch's token count, so the
accumulated gradient is the one-pass gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from unime_ray.models.loading import backbone
from unime_ray.training.reranker_data import IGNORE, RerankerBatch, TrainingSequence, encode_sequences


def answer_token_loss(model, batch, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens, each predicted from the position before.

    Only positions that predict a labelled token go through the LM head: the full
    vocabulary's logits for every prompt token (images included) are never formed.
    """
    hidden = backbone(model)(**batch).last_hidden_state  # [B, T, H]
    targets = labels[:, 1:]  # [B, T-1]: the token each position predicts
    predicting = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][predicting]).float()  # [N, V]
    return F.cross_entropy(logits, targets[predicting], reduction="sum")


def _chunks(items: Sequence, size: int | None) -> list[Sequence]:
    size = size or max(1, len(items))
    return [items[i : i + size] for i in range(0, len(items), size)]


def sequences_loss_backward(model, processor, sequences: Sequence[TrainingSequence], weight: float,
                            micro_batch_size: int | None, device: str) -> torch.Tensor:
    """Backpropagate ``weight`` x the mean answer-token loss of ``sequences``; returns the mean."""
    encoded = [encode_sequences(processor, chunk, device) for chunk in _chunks(sequences, micro_batch_size)]
    tokens = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in encoded)
    total = torch.zeros((), device=device)
    for inputs, labels in encoded:
        loss = answer_token_loss(model, inputs, labels.to(device)) / tokens
        if weight:
            (weight * loss).backward()
        total += loss.detach()
    return total


def reranker_step(model, processor, batch: RerankerBatch, list_weight: float, micro_batch_size: int | None,
                  device: str = "cpu") -> dict[str, float]:
    """Accumulate this batch's gradients into the model; returns the losses."""
    pair = sequences_loss_backward(model, processor, batch.pairs, 1.0, micro_batch_size, device)
    listwise = sequences_loss_backward(model, processor, batch.lists, list_weight, micro_batch_size, device)
    return {"loss": float(pair + list_weight * listwise), "loss_pair": float(pair), "loss_list": float(listwise)}
