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
    """[n_i, ...] per worker -> [sum n_i, ...] in rank order; only this worker's rows carry
    gradients. Workers may hold different numbers of rows (a skipped bad record)."""
    rank, size = world()
    if size == 1:
        return x
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    parts = [part[:n] for part, n in zip(parts, counts)]
    parts[rank] = x
    return torch.cat(parts, dim=0)


def loss_scale(gathered: bool) -> float:
    """Multiplier for a loss before backward, given the averaging all-reduce below."""
    return float(world()[1]) if gathered else 1.0


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce and average the gradients of ``parameters`` across workers.

    A missing gradient counts as zeros, so every worker issues the same collectives.
    """
    _, size = world()
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(size)


def workers_where(flag: bool) -> list[int]:
    """Ranks of the workers whose ``flag`` is set; a collective (every worker calls it)."""
    rank, size = world()
    if size == 1:
        return [0] if flag else []
    flags = torch.zeros(size, dtype=torch.float64, device=_reduce_device())
    flags[rank] = float(flag)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [r for r in range(size) if flags[r].item() > 0]


def _reduce_device():
    # NCCL reduces only GPU tensors; gloo takes CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def average_scalar(value: float) -> float:
    """Mean of a Python number across workers (for logging)."""
    _, size = world()
    if size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item() / size)
