"""Evaluation on the MMEB protocol (METHOD.md section 6).

    ray job submit --working-dir . -- python jobs/evaluate.py \
        --tasks /abs/mmeb_mini --model /abs/embedder [--reranker /abs/reranker] --output-dir /abs/out/eval

Writes OUT/results.json (Precision@1, Recall@k and MRR per task, per meta-task and
overall, scores as fractions in [0, 1]; the reranked numbers beside them), results.md,
results.png and rejects.parquet/ (shards).
"""

from __future__ import annotations

import json
import logging

from unime_ray.config import dump_config, parse_job_args
from unime_ray.eval.config import EvalConfig

logger = logging.getLogger("unime_ray.jobs.evaluate")
SHORTCUTS = {"--tasks": "tasks.path", "--image-root": "tasks.image_root", "--model": "embed.model",
             "--reranker": "rerank.model"}


def main(argv=None) -> dict:
    import ray

    from unime_ray.eval.evaluate import run_evaluation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_job_args(EvalConfig, argv, "Evaluate an embedder (and a reranker) on MMEB-format tasks", SHORTCUTS)
    logger.info("config:\n%s", dump_config(cfg))
    if not ray.is_initialized():
        ray.init()  # the entry point connects; the evaluation only uses the cluster
    results = run_evaluation(cfg)
    logger.info("results:\n%s", json.dumps({k: results[k] for k in ("label", "meta_tasks", "overall", "mmeb")}, indent=1))
    if "reranked" in results:
        logger.info("reranked:\n%s", json.dumps(
            {k: results["reranked"][k] for k in ("meta_tasks", "overall", "fallbacks")}, indent=1))
    return results


if __name__ == "__main__":  # vLLM spawns processes
    main()
