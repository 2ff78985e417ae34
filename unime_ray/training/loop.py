"""The step loop every trainer runs inside Ray Train (``train_loop_per_worker``).

A trainer supplies its model, how records become a batch and what one step computes;
the optimizer, the schedule, gradient averaging, resume, metrics and checkpoints are
this one loop's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from unime_ray.metrics import set_gauge
from unime_ray.training.checkpointing import report, restore_latest, warmup_linear
from unime_ray.training.config import TrainJobConfig
from unime_ray.training.distributed import average_gradients, average_scalar, workers_where
from unime_ray.training.records import next_trainable_batch, record_batches

logger = logging.getLogger(__name__)


class Batch(Protocol):
    size: int  # usable records
    skipped: list[tuple[str, str]]  # (query id, reason) of the records left out


BuildBatch = Callable[[list[dict], int], Batch]  # (records, step) -> batch
# batch -> {"loss": this worker's loss (gradients already accumulated), other scalars to log}
TrainStep = Callable[[Batch], dict[str, float]]


def setup_worker(cfg: TrainJobConfig) -> int:
    """Logging and threads for this worker; returns its rank."""
    import ray.train

    from unime_ray.models.loading import set_torch_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_torch_threads(cfg.torch_threads)
    return ray.train.get_context().get_world_rank()


def load_trainable_model(cfg: TrainJobConfig, prepare: Callable[[torch.nn.Module], None] | None = None,
                         modules_to_save: list[str] | None = None):
    """(processor, backbone + LoRA, or the whole backbone with ``finetune=full``, in train
    mode). ``prepare`` changes the backbone first (e.g. adds a layer, then named in
    ``modules_to_save`` to train it whole beside the adapters). The seed is shared by all
    workers so that their weights start identical (data parallelism keeps them so)."""
    from unime_ray.models.loading import load_model, load_processor
    from unime_ray.training.lora import apply_lora

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, cfg.device, cfg.dtype)
    if prepare is not None:
        prepare(model)
    if cfg.finetune == "lora":
        model = apply_lora(model, cfg.lora, modules_to_save)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    return load_processor(cfg.model, cfg.min_pixels, cfg.max_pixels), model


def stop_if_not_finite(step: int, loss: float, parameters: list[torch.nn.Parameter]) -> None:
    """Raise ``FloatingPointError`` on every worker when any worker's loss or gradients hold
    a NaN or an infinity: called before the gradients are averaged, which would spread them
    to every worker's adapters (and the next checkpoint)."""
    bad_grads = sum(1 for p in parameters if p.grad is not None and not torch.isfinite(p.grad).all())
    bad = workers_where(not math.isfinite(loss) or bad_grads > 0)
    if bad:
        raise FloatingPointError(
            f"step {step}: the loss or the gradients are not finite on worker(s) {bad} (this worker: loss {loss}, "
            f"{bad_grads} parameter(s) with non-finite gradients); stopped before averaging them. Usual causes: "
            "a learning rate too high, float16 overflow (use bfloat16), or non-finite judge scores in the records")


def run_training(cfg: TrainJobConfig, model, build_batch: BuildBatch, train_step: TrainStep) -> None:
    """Optimise ``model``'s trainable parameters for ``cfg.optim.max_steps`` steps, resuming
    from Ray Train's latest checkpoint; rank 0 appends each step to OUT/metrics.jsonl."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.seed + 1000 * rank)  # dropout differs across workers
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = warmup_linear(optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps)
    start = restore_latest(model, optimizer, scheduler)
    if start:
        logger.info("rank %d resumes from step %d", rank, start)
    batches = record_batches(ray.train.get_dataset_shard("train"), cfg.per_worker_batch_size, cfg.seed)
    for _ in range(start):  # a resumed run continues where the checkpointed one was in the data
        next(batches)
    skipped: list = []
    for step in range(start + 1, cfg.optim.max_steps + 1):
        began = time.perf_counter()
        batch = next_trainable_batch(batches, lambda records: build_batch(records, step), skipped)
        optimizer.zero_grad(set_to_none=True)
        scalars = train_step(batch)
        stop_if_not_finite(step, float(scalars["loss"]), parameters)
        average_gradients(parameters)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        seconds = time.perf_counter() - began
        metrics = {
            "step": step,
            **{name: average_scalar(float(value)) for name, value in scalars.items()},
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": average_scalar(batch.size / seconds) * world_size,
            "records_skipped": int(average_scalar(len(skipped)) * world_size),
            "resumed_from_step": start,
        }
        if rank == 0:
            logger.info("step %d loss %.5f lr %.2e %.1f samples/s", step, metrics["loss"], metrics["lr"],
                        metrics["samples_per_s"])
            set_gauge("train_samples_per_second", metrics["samples_per_s"], {"run": cfg.run_name})
            with (Path(cfg.output_dir) / "metrics.jsonl").open("a") as log:  # the run's step history
                log.write(json.dumps(metrics) + "\n")
        if step % cfg.checkpoint.every_steps == 0 or step == cfg.optim.max_steps:
            report(metrics, model, optimizer, scheduler, step)
        elif step % cfg.checkpoint.report_every_steps == 0:
            report(metrics)
