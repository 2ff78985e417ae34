"""Checkpoints inside a Ray Train loop: adapter (or every weight, ``finetune=full``) +
optimizer + scheduler + step, and the trained model's export.

Every worker calls ``report`` at the same steps (Ray Train requires it); rank 0 alone
writes the checkpoint, since data-parallel replicas hold identical weights.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from unime_ray.models.formats import DEFAULT_INPUT_FORMAT, InputFormat
from unime_ray.models.pooling import attach_latent_pool, save_latent_pool

logger = logging.getLogger(__name__)

ADAPTER = "adapter"
WEIGHTS = "model.safetensors"  # finetune=full
STATE = "trainer_state.pt"


def save_state(directory: Path, model, optimizer, scheduler, step: int) -> None:
    from safetensors.torch import save_model

    if hasattr(model, "peft_config"):
        model.save_pretrained(directory / ADAPTER)  # peft: the adapter only
    else:
        save_model(model, str(directory / WEIGHTS))  # stores tied tensors once
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               directory / STATE)


def load_state(directory: Path, model, optimizer, scheduler) -> int:
    """Restore a checkpoint written by ``save_state``; returns its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file, load_model

    if (directory / ADAPTER).exists():
        set_peft_model_state_dict(model, load_file(directory / ADAPTER / "adapter_model.safetensors"))
    else:
        load_model(model, str(directory / WEIGHTS))
    state = torch.load(directory / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def restore_latest(model, optimizer, scheduler) -> int:
    """The step to start from: that of Ray Train's latest checkpoint, or 0."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        return load_state(Path(directory), model, optimizer, scheduler)


def report(metrics: dict, model=None, optimizer=None, scheduler=None, step: int | None = None) -> None:
    """``ray.train.report`` with a checkpoint when ``model`` is given, else metrics only."""
    import ray.train

    if model is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_state(Path(tmp), model, optimizer, scheduler, step)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def warmup_linear(optimizer, warmup_steps: int, max_steps: int):
    """Linear warm-up to the peak rate, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def export_checkpoint(base_model: str, checkpoint_dir: Path, out_dir: Path, dtype: str = "float32",
                      input_format: InputFormat = DEFAULT_INPUT_FORMAT) -> Path:
    """A checkpoint as a plain model directory: LoRA merged into ``base_model``, or the
    base's architecture with the checkpoint's weights (``finetune=full``). An embedder that
    pools by latent attention (``input_format``) gets its trained layer in ``LATENT_FILE``."""
    from peft import PeftModel
    from safetensors.torch import load_model as load_weights

    from unime_ray.models.loading import load_model, load_processor

    model = load_model(base_model, "cpu", dtype)
    latent = input_format.pooling == "latent_attention"
    if latent:  # its weights come from the checkpoint
        attach_latent_pool(model, input_format.latents, input_format.latent_heads)
    if (checkpoint_dir / ADAPTER).exists():
        model = PeftModel.from_pretrained(model, str(checkpoint_dir / ADAPTER)).merge_and_unload()
    else:
        load_weights(model, str(checkpoint_dir / WEIGHTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    if latent:
        save_latent_pool(model, out_dir)
    model.save_pretrained(out_dir)
    load_processor(base_model).save_pretrained(out_dir)
    logger.info("exported %s (+ %s) to %s", base_model, checkpoint_dir, out_dir)
    return out_dir
