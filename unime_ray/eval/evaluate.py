"""The evaluation job (METHOD.md section 6): embed, rank, optionally rerank, score.

1. The task files are read by Ray Data tasks, one per task, into query rows
   (``OUT/stages/queries``); every query and every distinct candidate is embedded once
   by the shared embed stage (``OUT/embeddings``).
2. Each query ranks its own candidate list by cosine similarity, in a join of its
   (query, candidate) rows with the embeddings and a group-by on the query
   (``OUT/stages/ranked``); a group-by on the task turns the gold's ranks into
   Precision@1, Recall@k and MRR per task, then per meta-task and overall.
3. With ``rerank.model``, the embedder's top ``rerank.top_n`` of each query go through
   the reranker (another actor pool, ``OUT/stages/reranked``) and the same metrics are
   computed on the new order.

A query whose image cannot be read, or whose gold cannot be embedded, is rejected with
its reason and left out of ``n``; a candidate that fails ranks last. Rejects are written
by the workers that find them (``OUT/rejects.parquet/``, shards). The driver holds the
plan, row counts and one summary row per task; the caller connects to Ray.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa

from unime_ray.data.corpus import REJECT_SCHEMA
from unime_ray.dataplane.embed_stage import embed_dataset
from unime_ray.dataplane.io import count_rows, publish, read_dataset, rows_where_error, write_dataset
from unime_ray.eval.config import EvalConfig
from unime_ray.eval.items import unique_items
from unime_ray.eval.metrics import aggregate, task_metrics
from unime_ray.eval.rerank_stage import RERANKED_SCHEMA, rerank_dataset, rerank_outcomes
from unime_ray.eval.report import columns, write_report
from unime_ray.eval.scoring import RANKED_SCHEMA, rank_queries
from unime_ray.eval.summaries import task_summaries
from unime_ray.eval.tasks import QUERY_SCHEMA, plan_tasks, read_queries

logger = logging.getLogger(__name__)

STAGE_DIRS = ("stages", "embeddings")  # this job's own outputs, cleared before a run


def as_rejects(batch: pa.Table) -> pa.Table:
    """Rows with ``task``, ``id``, ``row`` and a set ``error`` -> reject rows."""
    batch = batch.filter(batch["error"].is_valid())
    return pa.Table.from_arrays([batch["task"], batch["id"], batch["row"], batch["error"]], schema=REJECT_SCHEMA)


def write_rejects(ds, path: Path) -> int:
    return write_dataset(ds.map_batches(as_rejects, batch_format="pyarrow"), path, REJECT_SCHEMA)


def per_task(tasks: list[dict], summaries: dict[str, dict], ks: list[int], with_candidates: bool) -> dict[str, dict]:
    """Every planned task's entry in results.json, in plan order; a task whose queries were
    all rejected (no summary row) gets ``n`` 0 and no metrics."""
    keys = list(task_metrics([], ks))
    entries = {}
    for task in tasks:
        summary = summaries.get(task["task"], {**task_metrics([], ks), "candidates": 0})
        entries[task["task"]] = {"meta_task": task["meta_task"], **{k: summary[k] for k in keys},
                                 **({"candidates": summary["candidates"]} if with_candidates else {})}
    return entries


def summarize(tasks: dict[str, dict]) -> dict:
    """The tasks with their meta-task and overall means, by our strict rule and by MMEB's."""
    meta, overall = aggregate(tasks)
    mmeb_meta, mmeb_overall = aggregate(tasks, "precision_at_1_mmeb")
    return {"tasks": tasks, "meta_tasks": meta, "overall": overall,
            "mmeb": {"meta_tasks": mmeb_meta, "overall": mmeb_overall}}


def absolute_paths(config: EvalConfig) -> None:
    """Actors run in other directories: hand them absolute paths."""
    config.output_dir = str(Path(config.output_dir).resolve())
    config.tasks.path = str(Path(config.tasks.path).resolve())
    if config.tasks.image_root:
        config.tasks.image_root = str(Path(config.tasks.image_root).resolve())
    for section in (config.embed, config.rerank):
        if section.model and Path(section.model).exists():
            section.model = str(Path(section.model).resolve())


def read_and_embed(config: EvalConfig, tasks: list[dict], out: Path, image_root: str) -> dict[str, int]:
    """``stages/queries`` (and the malformed rows' rejects), then ``embeddings``. Row counts."""
    queries_dir = out / "stages" / "queries"
    counts = {"queries": write_dataset(read_queries(tasks, config.tasks.max_queries), queries_dir, QUERY_SCHEMA)}
    queries = read_dataset(queries_dir)
    counts["malformed"] = write_rejects(queries, out / "stages" / "rejects" / "read")
    if counts["queries"] == counts["malformed"]:
        raise ValueError(f"no query to evaluate: the {counts['queries']} rows of tasks {[t['task'] for t in tasks]} "
                         f"are all malformed (their reasons: {out / 'stages' / 'rejects' / 'read'})")
    items = unique_items(queries, config.shuffle_partitions)
    embedded = embed_dataset(items, config.embed, image_root, config.tasks.max_image_pixels)
    counts["items"] = write_dataset(embedded.select_columns(["id", "embedding", "error"]), out / "embeddings")
    logger.info("%d queries read (%d malformed), %d distinct items embedded", counts["queries"], counts["malformed"],
                counts["items"])
    return counts


def rank(config: EvalConfig, out: Path) -> dict[str, int]:
    """``stages/ranked`` (and the rejected queries' rejects). Row counts."""
    ranked_dir = out / "stages" / "ranked"
    ranked = rank_queries(read_dataset(out / "stages" / "queries"), read_dataset(out / "embeddings"),
                          config.rerank.top_n, config.shuffle_partitions)
    counts = {"ranked": write_dataset(ranked, ranked_dir, RANKED_SCHEMA)}
    counts["rejected"] = write_rejects(read_dataset(ranked_dir), out / "stages" / "rejects" / "rank")
    logger.info("%d queries ranked, %d of them rejected", counts["ranked"], counts["rejected"])
    return counts


def rerank(config: EvalConfig, tasks: list[dict], kept, out: Path, image_root: str) -> dict:
    """The reranker over the kept ranked rows (``stages/reranked``): results.json's
    ``reranked`` entry."""
    r, reranked_dir = config.rerank, out / "stages" / "reranked"
    reranked = rerank_dataset(kept, r, image_root, config.tasks.max_image_pixels)
    write_dataset(reranked.drop_columns(["candidate_texts", "candidate_image_paths"]), reranked_dir, RERANKED_SCHEMA)
    needed = ["task", "meta_task", "row", "rank", "ties", "candidates", "fallback", "error"]
    reranked = read_dataset(reranked_dir, columns=needed)
    positions = [f"{kind}_{i}" for kind in ("pick", "gold") for i in range(r.top_n)]
    outcomes = read_dataset(reranked_dir, columns=["fallback", "error", "order", "embedder_rank"]).map_batches(
        rerank_outcomes, fn_kwargs={"top_n": r.top_n}, batch_format="pyarrow").sum(
        ["fallbacks", "errors", *positions]) or {}
    count = lambda name: int(outcomes.get(f"sum({name})") or 0)  # noqa: E731
    summaries = task_summaries(reranked, config.recall_ks, config.shuffle_partitions)
    return {"model": r.model, "backend": r.backend, "mode": r.mode, "top_n": r.top_n,
            **summarize(per_task(tasks, summaries, config.recall_ks, with_candidates=False)),
            "fallbacks": count("fallbacks"), "errors": count("errors"),
            # Where the reranker's first choice stood in the embedder's list, and where the gold did.
            "first_choice_positions": [count(f"pick_{i}") for i in range(r.top_n)],
            "gold_positions": [count(f"gold_{i}") for i in range(r.top_n)]}


def run_evaluation(config: EvalConfig) -> dict:
    """Evaluate and write OUT/results.json, results.md, results.png and rejects.parquet/.
    Needs a Ray connection (the job's entry point makes it)."""
    absolute_paths(config)
    out = Path(config.output_dir)
    for name in STAGE_DIRS:  # Parquet writes append: an earlier run's shards would be read again
        shutil.rmtree(out / name, ignore_errors=True)
    image_root = config.tasks.image_root or config.tasks.path

    started = time.perf_counter()
    tasks = plan_tasks(config.tasks.path, config.tasks.names)
    read_and_embed(config, tasks, out, image_root)
    seconds = {"embed": time.perf_counter() - started}
    started = time.perf_counter()
    counts = rank(config, out)
    kept = rows_where_error(read_dataset(out / "stages" / "ranked"), failed=False)
    summaries = task_summaries(kept, config.recall_ks, config.shuffle_partitions)
    seconds["rank"] = time.perf_counter() - started
    rejects = publish({name: out / "stages" / "rejects" / name for name in ("read", "rank")},
                      out / "rejects.parquet")
    results = {"label": config.label or Path(config.embed.model).name, "model": config.embed.model,
               **summarize(per_task(tasks, summaries, config.recall_ks, with_candidates=True)),
               "rejected": count_rows(rejects)}

    if config.rerank.model:
        started = time.perf_counter()
        results["reranked"] = rerank(config, tasks, kept, out, image_root)
        seconds["rerank"] = time.perf_counter() - started

    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    results["files"] = write_report(columns(results), out, "results")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    logger.info("overall precision@1 %s%s (%d queries ranked, %d rejected)", results["overall"],
                f", reranked {results['reranked']['overall']}" if "reranked" in results else "",
                counts["ranked"] - counts["rejected"], results["rejected"])
    return results
