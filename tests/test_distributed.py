"""Gathering, gradient averaging and the loss-scaling rule on a real 2-process gloo group."""

import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import text_records

from unime_ray.training.batch import build_batch
from unime_ray.training.distributed import average_gradients, average_scalar, gather_with_local_grad
from unime_ray.training.embedder_step import embedder_step, make_loss_fn
from unime_ray.training.loop import stop_if_not_finite


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


class _TextEncoder(torch.nn.Module):
    """A linear map of a fixed random feature per text: the loss-scaling rule does not
    depend on the backbone, and this one gives the same gradients in any process."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, items) -> torch.Tensor:
        features = torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(i.text.encode())))
                                for i in items])
        return torch.nn.functional.normalize(self.proj(features), dim=-1)


def _info_nce_gradient(records, hard: bool, chunk) -> torch.Tensor:
    """This worker's gradient after the step and the averaging all-reduce."""
    encoder = _TextEncoder()
    batch = build_batch(records, None, num_negatives=3)
    embedder_step(encoder, batch, make_loss_fn(batch, "info_nce", 0.05, hard), chunk)
    average_gradients(encoder.parameters())
    return encoder.proj.weight.grad.clone()


def _data_parallel_worker(rank: int, init_file: str, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        shard = text_records()[2 * rank : 2 * rank + 2]  # the one-worker batch, split in two
        results[rank] = {(hard, chunk): _info_nce_gradient(shard, hard, chunk)
                         for hard in (False, True) for chunk in (None, 3)}
    finally:
        dist.destroy_process_group()


def test_two_workers_give_the_one_worker_gradient_for_gathered_info_nce(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_data_parallel_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    for hard in (False, True):
        one_worker = _info_nce_gradient(text_records(), hard, None)
        assert one_worker.abs().sum() > 0
        for chunk in (None, 3):  # GradCache across workers too
            for rank in (0, 1):
                assert torch.allclose(results[rank][(hard, chunk)], one_worker, rtol=1e-5, atol=1e-7), (hard, chunk)
    # Not trivial: a worker's own half of the batch alone gives another gradient (without the
    # gathered rows), and without the scaling rule the average would be half the full one.
    local = _info_nce_gradient(text_records()[:2], True, None)
    assert not torch.allclose(local, one_worker, rtol=1e-3)


def _non_finite_worker(rank: int, init_file: str, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        layer = torch.nn.Linear(2, 1)
        layer(torch.ones(1, 2)).sum().backward()
        if rank == 1:
            layer.weight.grad[0, 0] = float("nan")
        try:
            stop_if_not_finite(7, 0.5, list(layer.parameters()))
        except FloatingPointError as error:
            results[rank] = {"error": str(error), "grad_finite": bool(torch.isfinite(layer.weight.grad).all())}
    finally:
        dist.destroy_process_group()


def test_a_non_finite_gradient_on_one_worker_stops_every_worker_before_the_all_reduce(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_non_finite_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in (0, 1):
        assert "step 7: the loss or the gradients are not finite on worker(s) [1]" in results[rank]["error"]
    assert results[0]["grad_finite"] and not results[1]["grad_finite"]  # nothing was averaged
    assert "1 parameter(s) with non-finite gradients" in results[1]["error"]


def test_a_non_finite_loss_stops_the_step():
    layer = torch.nn.Linear(2, 1)
    stop_if_not_finite(1, 0.5, list(layer.parameters()))  # finite: goes on
    for loss in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match=f"step 3: .* worker\\(s\\) \\[0\\] \\(this worker: loss {loss}"):
            stop_if_not_finite(3, loss, list(layer.parameters()))
