"""Data parallelism for our losses: gathering embeddings and averaging gradients.

Gradients are averaged explicitly after each step rather than through DDP's hooks:
GradCache runs several forward/backward passes per step and calls the backbone
directly, neither of which fits DDP's one-forward-one-backward contract. Only the LoRA
parameters are reduced, which is cheap.

Scaling rule, kept in this one place: a loss over the *gathered* batch is the same
global loss on every worker, with gradients reaching only the local rows; summing the
workers' gradients gives its full gradient. ``loss_scale`` makes that sum come out of
the same averaging all-reduce used for local losses.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] per worker -> [world * n, ...]; only this worker's rows carry gradients."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def loss_scale(gathered: bool) -> float:
    """Multiplier for a loss before backward, given the averaging all-reduce below."""
    return float(world()[1]) if gathered else 1.0


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce and average the gradients of ``parameters`` across workers."""
    _, size = world()
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(size)


def average_scalar(value: float) -> float:
    """Mean of a Python number across workers (for logging)."""
    _, size = world()
    if size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item() / size)
