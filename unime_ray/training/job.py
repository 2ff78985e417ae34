"""Driver side of a training job: config, paths, the record check, fit, export, summary.

``jobs/train_embedder.py`` and ``jobs/train_reranker.py`` are this with their own config
class and worker loop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from unime_ray.config import dump_config, parse_job_args
from unime_ray.training.config import TrainJobConfig

logger = logging.getLogger(__name__)


def absolute_paths(cfg: TrainJobConfig) -> None:
    """Workers run in other directories: hand them absolute paths."""
    mined = Path(cfg.data.mined).resolve()
    cfg.data.mined = str(mined)
    if cfg.data.image_root is None:
        cfg.data.image_root = str(mined.parent)  # mined records' images are relative to their directory
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    if Path(cfg.model).exists():
        cfg.model = str(Path(cfg.model).resolve())


def check_negatives(mined: str, needed: int) -> None:
    """Fail before any worker starts if the records have fewer negatives than training uses
    (a Ray Data aggregate: only the minimum reaches the driver)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    counts = ray.data.read_parquet(mined, columns=["neg_ids"]).map_batches(
        lambda batch: pa.table({"negatives": pc.list_value_length(batch["neg_ids"])}), batch_format="pyarrow")
    fewest = counts.min("negatives") or 0
    if needed > fewest:
        raise SystemExit(f"{mined} has records with {fewest} negatives; this training needs {needed} "
                         "(mine with a larger select.k)")


def records_dataset(cfg: TrainJobConfig):
    """The mined records as a Ray Dataset. Mining writes them grouped by query hash, and a
    corpus is often task after task: with ``data.shuffle=global`` a seeded Ray Data
    ``random_shuffle`` mixes them before Ray Train splits them over the workers. The seed is
    fixed, so every epoch's pass (Ray Train re-runs the dataset per epoch) and a resumed run
    see the same global order; each epoch then differs through the workers' seeded local
    buffers (``records.record_batches``)."""
    import ray.data

    dataset = ray.data.read_parquet(cfg.data.mined, columns=cfg.RECORD_COLUMNS + ["dataset"] * bool(cfg.data.datasets))
    # Files are read in parallel: without a fixed read order the seeded shuffle would not repeat.
    dataset.context.execution_options.preserve_order = True
    if cfg.data.datasets:
        dataset = dataset.map_batches(_of_datasets, fn_kwargs={"names": cfg.data.datasets}, batch_format="pyarrow")
    return dataset.random_shuffle(seed=cfg.seed) if cfg.data.shuffle == "global" else dataset


def _of_datasets(batch, names: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch["dataset"], value_set=pa.array(names, pa.string()))).drop_columns(["dataset"])


def run_training_job(config_class: type[TrainJobConfig], loop: Callable[[dict], None], argv=None,
                     description: str = "") -> dict:
    """Parse the config, train on Ray Train, export the merged model; returns the summary
    also written to OUT/train_summary.json. Runs on the connected Ray cluster."""
    from unime_ray.models.formats import record_format, resolve_formats
    from unime_ray.training.checkpointing import export_checkpoint
    from unime_ray.training.runner import build_trainer, latest_checkpoint_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_job_args(config_class, argv, description=description)
    logger.info("config:\n%s", dump_config(cfg))
    absolute_paths(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.negatives_needed:
        check_negatives(cfg.data.mined, cfg.negatives_needed)
    records = records_dataset(cfg)
    if cfg.data.datasets and not records.count():
        raise SystemExit(f"{cfg.data.mined} has no record of data.datasets={cfg.data.datasets}")
    result = build_trainer(loop, cfg, records).fit()
    summary = {"metrics": result.metrics, "checkpoint": str(latest_checkpoint_dir(result))}
    if cfg.export:
        # The formats it was trained with, so that every job reads it back exactly so.
        formats = resolve_formats(cfg.model, cfg.format, cfg.pooling, cfg.bidirectional)
        exported = export_checkpoint(cfg.model, latest_checkpoint_dir(result), out / "model", cfg.dtype, formats[0])
        record_format(exported, *formats)
        summary["model"] = str(exported)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    return summary
