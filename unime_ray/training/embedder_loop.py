"""The embedder's Ray Train worker loop (``train_loop_per_worker``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from unime_ray.training.batch import build_batch
from unime_ray.training.checkpointing import report, restore_latest, warmup_linear
from unime_ray.training.config import TrainEmbedderConfig
from unime_ray.training.distributed import average_gradients, average_scalar, loss_scale
from unime_ray.training.embedder_step import embedder_step, make_loss_fn

logger = logging.getLogger(__name__)


def load_trainable_embedder(cfg: TrainEmbedderConfig):
    """Backbone + LoRA as an ``Embedder``. The seed is shared by all workers so that
    their adapters start identical (data parallelism keeps them so)."""
    from unime_ray.models.embedder import Embedder
    from unime_ray.models.loading import load_model, load_processor
    from unime_ray.training.lora import apply_lora

    torch.manual_seed(cfg.seed)
    model = apply_lora(load_model(cfg.model, cfg.device, cfg.dtype), cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    return Embedder(load_processor(cfg.model), model, cfg.device)


def record_batches(shard, batch_size: int, seed: int, shuffle_buffer: int = 1024):
    """Endless record batches from this worker's shard, epoch after epoch, each epoch in
    its own seeded order (reproducible, different across epochs).

    Mined records arrive sorted by query id, i.e. task after task; the local shuffle
    buffer mixes them (fully, for shards up to ``shuffle_buffer`` records).
    """
    epoch = 0
    while True:
        produced = False
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=max(shuffle_buffer, 4 * batch_size),
                                        local_shuffle_seed=seed + epoch):
            produced = True
            yield batch.to_pylist()
        if not produced:
            raise ValueError(f"this worker's shard has fewer than {batch_size} records; "
                             "lower per_worker_batch_size or use fewer workers")
        epoch += 1


def next_trainable_batch(batches, cfg: TrainEmbedderConfig, num_negatives: int, skipped: list):
    """The next batch with at least one usable record; bad records are logged and counted."""
    while True:
        batch = build_batch(next(batches), cfg.data.image_root, num_negatives, cfg.dedup_candidates)
        for query_id, reason in batch.skipped:
            logger.warning("skipped training record %r: %s", query_id, reason)
        skipped.extend(batch.skipped)
        if batch.size:
            return batch


def train_embedder_loop(config: dict) -> None:
    import ray.train

    from unime_ray.models.loading import set_torch_threads

    cfg = TrainEmbedderConfig.model_validate(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    set_torch_threads(cfg.torch_threads)
    embedder = load_trainable_embedder(cfg)
    torch.manual_seed(cfg.seed + 1000 * rank)  # dropout differs across workers
    parameters = [p for p in embedder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = warmup_linear(optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps)
    start = restore_latest(embedder.model, optimizer, scheduler)
    if start:
        logger.info("rank %d resumes from step %d", rank, start)
    batches = record_batches(ray.train.get_dataset_shard("train"), cfg.per_worker_batch_size, cfg.seed)
    for _ in range(start):  # a resumed run continues where the checkpointed one was in the data
        next(batches)
    scale = loss_scale(gathered=cfg.loss == "info_nce")
    num_negatives = cfg.num_negatives if cfg.loss == "soft_label" or cfg.info_nce_hard_negatives else 0
    skipped: list = []
    for step in range(start + 1, cfg.optim.max_steps + 1):
        began = time.perf_counter()
        batch = next_trainable_batch(batches, cfg, num_negatives, skipped)
        optimizer.zero_grad(set_to_none=True)
        loss = embedder_step(embedder.encode, batch,
                             make_loss_fn(batch, cfg.loss, cfg.temperature, cfg.info_nce_hard_negatives),
                             cfg.gradcache_chunk_size)
        average_gradients(parameters)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        seconds = time.perf_counter() - began
        metrics = {
            "step": step,
            "loss": average_scalar(loss.item() / scale),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": average_scalar(batch.size / seconds) * context.get_world_size(),
            "candidates_encoded": len(batch.candidates),
            "records_skipped": int(average_scalar(len(skipped)) * context.get_world_size()),
            "resumed_from_step": start,
        }
        if rank == 0:
            logger.info("step %d loss %.5f lr %.2e %.1f samples/s", step, metrics["loss"], metrics["lr"],
                        metrics["samples_per_s"])
            with (Path(cfg.output_dir) / "metrics.jsonl").open("a") as log:  # the run's step history
                log.write(json.dumps(metrics) + "\n")
        if step % cfg.checkpoint.every_steps == 0 or step == cfg.optim.max_steps:
            report(metrics, embedder.model, optimizer, scheduler, step)
        else:
            report(metrics)
