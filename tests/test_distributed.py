"""Gathering and gradient averaging on a real 2-process gloo group."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unime_ray.training.distributed import average_gradients, average_scalar, gather_with_local_grad


def _worker(rank: int, init_file: str, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = 2 if rank == 0 else 3  # unequal: a worker skipped a bad record
        x = torch.full((rows, 2), float(rank + 1), requires_grad=True)
        gathered = gather_with_local_grad(x)
        gathered.sum().backward()
        layer = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            layer.weight.fill_(0.0)
        if rank == 0:  # rank 1 leaves its gradient unset: it still takes part in the reduce
            layer(torch.tensor([[4.0]])).sum().backward()
        average_gradients(layer.parameters())
        results[rank] = {
            "gathered": gathered.detach().tolist(),
            "x_grad": x.grad.tolist(),
            "weight_grad": layer.weight.grad.item(),
            "mean": average_scalar(float(rank * 10)),
        }
    finally:
        dist.destroy_process_group()


def test_unequal_gather_keeps_local_gradients_and_averages_across_workers(tmp_path):
    results = mp.Manager().dict()
    # gloo's file store removes the file when the group is done: give it a fresh path.
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    expected = [[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 3
    for rank in (0, 1):
        assert results[rank]["gathered"] == expected  # rank order, each worker's own rows count
        assert results[rank]["x_grad"] == [[1.0, 1.0]] * (2 if rank == 0 else 3)  # gradient reached local rows
        assert results[rank]["weight_grad"] == 2.0  # (4 + 0) / 2
        assert results[rank]["mean"] == 5.0
