"""Embedder training throughput: samples/s with 1 vs 2 Ray Train workers, and one
training step with vs without candidate de-duplication on the same batch.
Writes JSON under benchmarks/results/.

    python benchmarks/train_throughput.py [--mined out/demo/mined.parquet] [--steps 20]

Needs mined records: `make demo` writes them to out/demo/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from reporting import DEMO_RECORDS, REPO, mined_records, setup_logging, write_result

logger = logging.getLogger("benchmarks.train_throughput")


def time_workers(mined: Path, model: str, workers: int, steps: int, batch: int) -> dict:
    import ray.data

    from unime_ray.training.config import TrainEmbedderConfig
    from unime_ray.training.embedder_loop import train_embedder_loop
    from unime_ray.training.runner import build_trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainEmbedderConfig.model_validate({
            "output_dir": out, "model": model, "per_worker_batch_size": batch, "gradcache_chunk_size": 16,
            "data": {"mined": str(mined), "image_root": str(mined.parent)},
            "optim": {"max_steps": steps, "warmup_steps": 2},
            "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
            "checkpoint": {"every_steps": steps}, "export": False,
        })
        build_trainer(train_embedder_loop, cfg, ray.data.read_parquet(str(mined))).fit()
        history = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steady = [h["samples_per_s"] for h in history[2:]]  # the first steps pay warm-up
    return {"workers": workers, "steps": steps, "per_worker_batch_size": batch,
            "samples_per_second": round(statistics.median(steady), 1)}


def time_dedup(mined: Path, model: str, batch: int, repeats: int) -> dict:
    import pyarrow.parquet as pq
    import torch

    from unime_ray.models.embedder import Embedder
    from unime_ray.models.loading import load_model, load_processor
    from unime_ray.training.batch import build_batch
    from unime_ray.training.embedder_step import embedder_step, make_loss_fn
    from unime_ray.training.lora import LoraSettings, apply_lora

    records = pq.read_table(mined).slice(0, batch).to_pylist()
    torch.manual_seed(0)
    embedder = Embedder(load_processor(model), apply_lora(load_model(model), LoraSettings()).train())
    result = {"queries": batch}
    for dedup in (False, True):
        prepared = build_batch(records, str(mined.parent), 8, dedup)
        seconds = []
        for _ in range(repeats):
            embedder.model.zero_grad()
            start = time.perf_counter()
            embedder_step(embedder.encode, prepared, make_loss_fn(prepared, "soft_label", 0.02), 16)
            seconds.append(time.perf_counter() - start)
        key = "dedup" if dedup else "no_dedup"
        result[key] = {"candidates_encoded": len(prepared.candidates), "step_seconds": round(statistics.median(seconds), 3),
                       "samples_per_second": round(batch / statistics.median(seconds), 1)}
    result["speedup"] = round(result["no_dedup"]["step_seconds"] / result["dedup"]["step_seconds"], 2)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mined", default=str(DEMO_RECORDS))
    parser.add_argument("--model", default=str(REPO / ".cache/checkpoints/embedder"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="queries per worker per step")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/train_throughput.json"))
    args = parser.parse_args(argv)
    setup_logging()
    mined = mined_records(args.mined)
    dedup = time_dedup(mined, args.model, 2 * args.batch, repeats=5)

    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    workers = [time_workers(mined, args.model, n, args.steps, args.batch) for n in (1, 2)]
    ray.shutdown()
    return write_result({"workers": workers, "dedup": dedup}, args.out)


if __name__ == "__main__":
    main()
