"""Generative pretraining of a base MLLM on Ray Train, from instruction turns.

    python -m unime_ray.data.instructions /abs/instructions          # the turns, training splits only
    ray job submit --working-dir . -- python jobs/pretrain.py \
        --config configs/pretrain.yaml --output-dir /abs/out model=/abs/random_checkpoint \
        data.mined=/abs/instructions/instructions.parquet

Next-token cross-entropy on each turn's answer (captions, VQA answers, digit names, and
Yes/No on whether a candidate suits a query), every weight trained. Writes
OUT/metrics.jsonl, OUT/train_summary.json and OUT/model: a plain model directory that the
embedder's trainer starts from and the judge (vLLM or transformers) loads.
"""

from __future__ import annotations

from unime_ray.training.config import PretrainConfig
from unime_ray.training.job import run_training_job
from unime_ray.training.pretrain_loop import pretrain_loop


def main(argv=None) -> dict:
    import ray

    if not ray.is_initialized():
        ray.init()  # the entry point connects; the job driver only uses the cluster
    return run_training_job(PretrainConfig, pretrain_loop, argv, "Generative pretraining of a base MLLM on Ray Train")


if __name__ == "__main__":
    main()
