"""The reranker's Ray Train worker loop (``train_loop_per_worker``)."""

from __future__ import annotations

from unime_ray.models.formats import resolve_prompt_format
from unime_ray.training.config import TrainRerankerConfig
from unime_ray.training.loop import load_trainable_model, run_training, setup_worker
from unime_ray.training.reranker_data import RerankerBatch, build_reranker_batch
from unime_ray.training.reranker_step import reranker_step


def train_reranker_loop(config: dict) -> None:
    cfg = TrainRerankerConfig.model_validate(config)
    setup_worker(cfg)
    processor, model = load_trainable_model(cfg)
    prompts = resolve_prompt_format(cfg.model, cfg.format)

    def build(records: list[dict], step: int) -> RerankerBatch:
        return build_reranker_batch(records, cfg.data.image_root, cfg.list_size, cfg.seed, step, prompts)

    def train_step(batch: RerankerBatch) -> dict[str, float]:
        return reranker_step(model, processor, batch, cfg.list_weight, cfg.micro_batch_size, cfg.device)

    run_training(cfg, model, build, train_step)
