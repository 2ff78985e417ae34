"""Embedder training on Ray Train (METHOD.md section 4), from mined records.

    ray job submit --working-dir . -- python jobs/train_embedder.py \
        --config configs/train_embedder.yaml --output-dir /abs/out data.mined=/abs/mine/mined.parquet

Writes OUT/ray_results/RUN (checkpoints), OUT/metrics.jsonl, OUT/train_summary.json and,
with export on, OUT/model: the merged model, loadable wherever a checkpoint is (mining,
serving).
"""

from __future__ import annotations

from unime_ray.training.config import TrainEmbedderConfig
from unime_ray.training.embedder_loop import train_embedder_loop
from unime_ray.training.job import run_training_job


def main(argv=None) -> dict:
    import ray

    if not ray.is_initialized():
        ray.init()  # the entry point connects; the job driver only uses the cluster
    return run_training_job(TrainEmbedderConfig, train_embedder_loop, argv,
                            "UniME-V2 embedder training on Ray Train")


if __name__ == "__main__":
    main()
