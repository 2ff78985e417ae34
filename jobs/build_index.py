"""Embed a target corpus with Ray Data and write the FAISS index the serving app loads.

    ray job submit --working-dir . -- python jobs/build_index.py --output-dir /abs/out/index \
        embed.model=/abs/embedder corpus.source=parquet corpus.path=/abs/corpus

The corpus is read as by the mining job (``corpus.*``); its targets are indexed.
"""

from __future__ import annotations

import json
import logging

from unime_ray.config import dump_config, parse_job_args
from unime_ray.serving.config import BuildIndexConfig


def main(argv=None) -> dict:
    import ray

    from unime_ray.serving.index import build_index_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_job_args(BuildIndexConfig, argv, "Build the serving app's FAISS index from a target corpus")
    logging.getLogger("unime_ray.jobs.build_index").info("config:\n%s", dump_config(cfg))
    if not ray.is_initialized():
        ray.init()
    meta = build_index_dir(cfg)
    print(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    main()
