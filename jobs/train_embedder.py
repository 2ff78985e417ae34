"""Embedder training on Ray Train (METHOD.md section 4), from mined records.

    ray job submit --working-dir . -- python jobs/train_embedder.py \
        --config configs/train_embedder.yaml --output-dir /abs/out data.mined=/abs/mine/mined.parquet

Writes OUT/ray_results/RUN (checkpoints), OUT/train_summary.json and, with export on,
OUT/model: the merged model, loadable wherever a checkpoint is (mining, serving).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from unime_ray.config import dump_config, parse_job_args
from unime_ray.training.config import TrainEmbedderConfig

logger = logging.getLogger("unime_ray.jobs.train_embedder")

RECORD_COLUMNS = ["query_id", "query_instruction", "query_text", "query_image", "positive_id", "pos_instruction",
                  "pos_text", "pos_image", "query_pos_score", "neg_ids", "neg_instructions", "neg_texts",
                  "neg_images", "neg_scores"]


def main(argv=None) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from unime_ray.training.embedder_loop import train_embedder_loop
    from unime_ray.training.lora import export_merged
    from unime_ray.training.runner import build_trainer, latest_checkpoint_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_job_args(TrainEmbedderConfig, argv, description="UniME-V2 embedder training on Ray Train")
    logger.info("config:\n%s", dump_config(cfg))
    if not ray.is_initialized():
        ray.init()
    # Workers run in other directories: hand them absolute paths.
    mined = Path(cfg.data.mined).resolve()
    cfg.data.mined = str(mined)
    if cfg.data.image_root is None:
        cfg.data.image_root = str(mined.parent)  # mined records' images are relative to their directory
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    if Path(cfg.model).exists():
        cfg.model = str(Path(cfg.model).resolve())
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    negatives = pq.read_table(mined, columns=["neg_ids"]).column("neg_ids")
    fewest = pc.min(pc.list_value_length(negatives)).as_py() if len(negatives) else 0
    if cfg.num_negatives > (fewest or 0):
        raise SystemExit(f"{mined} has records with {fewest} negatives; num_negatives={cfg.num_negatives} "
                         "needs at least that many (mine with a larger select.k)")
    dataset = ray.data.read_parquet(str(mined), columns=RECORD_COLUMNS)
    result = build_trainer(train_embedder_loop, cfg, dataset).fit()
    out = Path(cfg.output_dir)
    summary = {"metrics": result.metrics, "checkpoint": str(latest_checkpoint_dir(result))}
    if cfg.export:
        adapter = latest_checkpoint_dir(result) / "adapter"
        summary["model"] = str(export_merged(cfg.model, adapter, out / "model", cfg.dtype))
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
