"""Reranker training on Ray Train (METHOD.md section 5), from mined records.

    ray job submit --working-dir . -- python jobs/train_reranker.py \
        --config configs/train_reranker.yaml --output-dir /abs/out data.mined=/abs/mine/mined.parquet

Pairwise (Yes/No) and listwise ("Ans: (i)") next-token training with LoRA on the language
model. Writes OUT/ray_results/RUN (checkpoints), OUT/metrics.jsonl,
OUT/train_summary.json and, with export on, OUT/model: a plain model directory that
``Reranker.from_pretrained`` (vLLM or transformers) loads.
"""

from __future__ import annotations

from unime_ray.training.config import TrainRerankerConfig
from unime_ray.training.job import run_training_job
from unime_ray.training.reranker_loop import train_reranker_loop


def main(argv=None) -> dict:
    import ray

    if not ray.is_initialized():
        ray.init()  # the entry point connects; the job driver only uses the cluster
    return run_training_job(TrainRerankerConfig, train_reranker_loop, argv,
                            "UniME-V2 reranker training (pairwise + listwise) on Ray Train")


if __name__ == "__main__":
    main()
