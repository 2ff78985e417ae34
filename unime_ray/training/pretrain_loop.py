"""Generative pretraining's Ray Train worker loop: instruction turns -> next-token loss on
their answers (the reranker's loss, ``reranker_step.sequences_loss_backward``, on one kind
of sequence)."""

from __future__ import annotations

from dataclasses import dataclass, field

from unime_ray.data.images import load_image
from unime_ray.models.inputs import user_turn
from unime_ray.training.config import PretrainConfig
from unime_ray.training.loop import load_trainable_model, run_training, setup_worker
from unime_ray.training.records import RECORD_ERRORS
from unime_ray.training.reranker_data import TrainingSequence
from unime_ray.training.reranker_step import sequences_loss_backward


@dataclass
class TurnBatch:
    turns: list[TrainingSequence] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (turn id, reason)

    @property
    def size(self) -> int:
        return len(self.turns)


def turn_sequence(record: dict, image_root: str | None) -> TrainingSequence:
    """An instruction turn (``parts``: texts and image paths in order, ``answer``) as one
    training sequence; raises a ``RECORD_ERRORS`` on an unreadable image or an empty turn."""
    content, images = [], []
    for part in record["parts"]:
        if part["image_path"]:
            images.append(load_image(None, part["image_path"], image_root))
            content.append({"type": "image"})
        elif part["text"]:
            content.append({"type": "text", "text": part["text"]})
    if not content or not record["answer"]:
        raise ValueError("a turn needs a prompt and an answer")
    return TrainingSequence("pair", user_turn(content), images, record["answer"])


def build_turn_batch(records: list[dict], image_root: str | None) -> TurnBatch:
    batch = TurnBatch()
    for record in records:
        try:
            batch.turns.append(turn_sequence(record, image_root))
        except RECORD_ERRORS as error:
            batch.skipped.append((record["query_id"], str(error)))
    return batch


def pretrain_loop(config: dict) -> None:
    cfg = PretrainConfig.model_validate(config)
    setup_worker(cfg)
    processor, model = load_trainable_model(cfg)

    def build(records: list[dict], step: int) -> TurnBatch:
        return build_turn_batch(records, cfg.data.image_root)

    def train_step(batch: TurnBatch) -> dict[str, float]:
        return {"loss": float(sequences_loss_backward(model, processor, batch.turns, 1.0, cfg.micro_batch_size,
                                                      cfg.device))}

    run_training(cfg, model, build, train_step)
