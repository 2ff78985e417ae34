"""UniME-V2 hard-negative mining as a Ray job.

    ray job submit --working-dir . -- python jobs/mine.py --config configs/mine.yaml \
        --output-dir /abs/out judge.backend=transformers retrieval.top_k=20

Paths in the config are read where the job runs: on a cluster, use absolute paths on
shared storage. Re-running with the same output directory resumes the job.
"""

from __future__ import annotations

import json
import logging

from unime_ray.config import dump_config, parse_job_args
from unime_ray.mining.config import MineConfig
from unime_ray.mining.pipeline import run_mining

logger = logging.getLogger("unime_ray.jobs.mine")


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_job_args(MineConfig, argv, description="UniME-V2 hard-negative mining on Ray")
    logger.info("config:\n%s", dump_config(config))
    import ray

    ray.init(address=config.ray_address)  # the entry point connects; the pipeline only uses the cluster
    summary = run_mining(config)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":  # vLLM's engine spawns processes: keep the guard
    main()
