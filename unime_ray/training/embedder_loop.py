"""The embedder's Ray Train worker loop (``train_loop_per_worker``)."""

from __future__ import annotations

from unime_ray.training.batch import EmbedBatch, build_batch
from unime_ray.training.config import TrainEmbedderConfig
from unime_ray.training.distributed import loss_scale
from unime_ray.training.embedder_step import embedder_step, make_loss_fn
from unime_ray.training.loop import load_trainable_model, run_training, setup_worker


def load_trainable_embedder(cfg: TrainEmbedderConfig):
    """Backbone + LoRA as an ``Embedder``, bidirectional and with a latent-attention layer
    (trained whole) where its input format says so."""
    from unime_ray.models.embedder import Embedder, prepare_model
    from unime_ray.models.formats import resolve_input_format
    from unime_ray.models.pooling import LATENT_POOL

    fmt = resolve_input_format(cfg.model, cfg.format, cfg.pooling, cfg.bidirectional)
    processor, model = load_trainable_model(cfg, lambda backbone: prepare_model(backbone, fmt, cfg.model, train=True),
                                            [LATENT_POOL] if fmt.pooling == "latent_attention" else None)
    return Embedder(processor, model, cfg.device, fmt)


def train_embedder_loop(config: dict) -> None:
    cfg = TrainEmbedderConfig.model_validate(config)
    setup_worker(cfg)
    embedder = load_trainable_embedder(cfg)
    scale = loss_scale(gathered=cfg.loss == "info_nce")

    def build(records: list[dict], step: int) -> EmbedBatch:
        return build_batch(records, cfg.data.image_root, cfg.negatives_needed, cfg.dedup_candidates)

    def train_step(batch: EmbedBatch) -> dict[str, float]:
        loss = embedder_step(embedder.encode, batch,
                             make_loss_fn(batch, cfg.loss, cfg.temperature, cfg.info_nce_hard_negatives,
                                          cfg.soft_label_log),
                             cfg.gradcache_chunk_size)
        return {"loss": loss.item() / scale, "candidates_encoded": len(batch.candidates)}

    run_training(cfg, embedder.model, build, train_step)
