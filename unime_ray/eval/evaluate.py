"""The evaluation job (METHOD.md section 6): embed, rank, optionally rerank, score.

1. Every query and every distinct candidate of every task is embedded once, by a Ray
   Data actor pool (the mining job's embed stage).
2. Each query ranks its own candidate list by cosine similarity; the gold's rank gives
   Precision@1, Recall@k and MRR per task, per meta-task and overall.
3. With ``rerank.model``, the embedder's top ``rerank.top_n`` of each query go through
   the reranker (another actor pool) and the same metrics are computed on the new order.

A query whose image cannot be read, or whose gold cannot be embedded, is rejected with
its reason (``rejects.parquet``) and left out of ``n``; a candidate that fails ranks last.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.corpus import rejects_table
from unime_ray.eval.config import EvalConfig
from unime_ray.eval.metrics import aggregate, gold_ranks, ranks_from_orders, task_metrics
from unime_ray.eval.report import columns, write_report
from unime_ray.eval.tasks import EvalSet, EvalTask, read_tasks
from unime_ray.dataplane.stages import ITEM_COLUMNS, ActorStage, embed_dataset

logger = logging.getLogger(__name__)


def embedder_order(scores: np.ndarray) -> list[int]:
    """Candidates by descending score; the gold (index 0) after any candidate it ties with,
    as ``gold_ranks`` counts it."""
    is_gold = np.zeros(len(scores), dtype=bool)
    is_gold[0] = True
    return np.lexsort((is_gold, -scores)).tolist()


def score_task(task: EvalTask, vectors: dict[str, np.ndarray], errors: dict[str, str]) -> tuple[list[int], list[np.ndarray], list[dict]]:
    """(kept query positions, each kept query's candidate scores, rejects)."""
    kept, scores, rejects = [], [], []
    for position, (query_id, candidate_ids) in enumerate(zip(task.query_ids, task.candidate_ids)):
        failed = query_id if query_id not in vectors else candidate_ids[0] if candidate_ids[0] not in vectors else None
        if failed is not None:
            what = "query" if failed == query_id else "gold candidate"
            rejects.append({"table": task.name, "id": query_id, "row": task.rows[position],
                            "reason": f"{what}: {errors.get(failed, 'not embedded')}"})
            continue
        query = vectors[query_id]
        # A candidate that failed to embed ranks below every other one.
        scores.append(np.array([float(query @ vectors[c]) if c in vectors else -np.inf for c in candidate_ids]))
        kept.append(position)
    return kept, scores, rejects


def summarize(per_task: dict[str, dict]) -> dict:
    meta, overall = aggregate(per_task)
    return {"tasks": per_task, "meta_tasks": meta, "overall": overall}


def rerank_rows(evalset: EvalSet, ranked: dict[str, tuple[EvalTask, list[int], list[list[int]]]], top_n: int) -> pa.Table:
    """One row per kept query: its item columns and its top ``top_n`` candidates."""
    items = {row["id"]: row for row in evalset.items.to_pylist()}
    rows = []
    for task, kept, orders in ranked.values():
        for position, order in zip(kept, orders):
            query = items[task.query_ids[position]]
            head = [items[task.candidate_ids[position][i]] for i in order[:top_n]]
            rows.append({**{k: query[k] for k in ITEM_COLUMNS},
                         "candidate_texts": [c["text"] or "" for c in head],
                         "candidate_image_paths": [c["image_path"] or "" for c in head]})
    schema = pa.schema([*(evalset.items.schema.field(k) for k in ITEM_COLUMNS),
                        pa.field("candidate_texts", pa.list_(pa.string())),
                        pa.field("candidate_image_paths", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)


def rerank(config: EvalConfig, rows: pa.Table, image_root: str, out: Path) -> dict[str, dict]:
    """Query id -> {"order": [...], "fallback": bool, "error": str | None}."""
    from unime_ray.eval.rerank_stage import RerankUDF
    from unime_ray.models.settings import RerankSettings

    r = config.rerank
    settings = r.model_dump(include=set(RerankSettings.model_fields), mode="json")
    stage = ActorStage.from_config(r)
    stage.dataset(rows).map_batches(
        RerankUDF,
        fn_constructor_kwargs={"settings": settings, "image_root": image_root,
                               "max_pixels": config.tasks.max_image_pixels, "torch_threads": r.torch_threads},
        **stage.map_batches_kwargs()).write_parquet(str(out / "reranked"))
    return {row["id"]: row for row in pq.read_table(out / "reranked").to_pylist()}


def absolute_paths(config: EvalConfig) -> None:
    """Actors run in other directories: hand them absolute paths."""
    config.output_dir = str(Path(config.output_dir).resolve())
    config.tasks.path = str(Path(config.tasks.path).resolve())
    if config.tasks.image_root:
        config.tasks.image_root = str(Path(config.tasks.image_root).resolve())
    for section in (config.embed, config.rerank):
        if section.model and Path(section.model).exists():
            section.model = str(Path(section.model).resolve())


def run_evaluation(config: EvalConfig) -> dict:
    """Evaluate and write OUT/results.json, results.md, results.png and rejects.parquet."""
    import ray

    absolute_paths(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_root = config.tasks.image_root or config.tasks.path
    started = time.perf_counter()
    evalset = read_tasks(config.tasks.path, config.tasks.names, config.tasks.max_queries)
    logger.info("%d tasks, %d items to embed, %d rows rejected on reading", len(evalset.tasks),
                evalset.items.num_rows, len(evalset.rejects))
    if not ray.is_initialized():
        ray.init()
    embed_dataset(evalset.items, config.embed, image_root, config.tasks.max_image_pixels).write_parquet(
        str(out / "embeddings"))
    embedded = pq.read_table(out / "embeddings").to_pylist()
    vectors = {row["id"]: np.asarray(row["embedding"], np.float32) for row in embedded if row["embedding"] is not None}
    errors = {row["id"]: row["error"] for row in embedded if row["error"]}
    seconds = {"embed": time.perf_counter() - started}

    rejects, per_task, ranked = list(evalset.rejects), {}, {}
    for task in evalset.tasks:
        kept, scores, task_rejects = score_task(task, vectors, errors)
        rejects += task_rejects
        ranks = gold_ranks(np.stack(scores)) if scores and len({len(s) for s in scores}) == 1 else \
            np.array([int(gold_ranks(s[None])[0]) for s in scores], dtype=np.int64)
        per_task[task.name] = {"meta_task": task.meta_task, **task_metrics(ranks, config.recall_ks),
                               "candidates": max((len(s) for s in scores), default=0)}
        ranked[task.name] = (task, kept, [embedder_order(s) for s in scores])
    results = {"label": config.label or Path(config.embed.model).name, "model": config.embed.model,
               **summarize(per_task), "rejected": len(rejects)}

    if config.rerank.model:
        started = time.perf_counter()
        reranked = rerank(config, rerank_rows(evalset, ranked, config.rerank.top_n), image_root, out)
        per_task_reranked = {}
        for name, (task, kept, orders) in ranked.items():
            new_orders = []
            for position, order in zip(kept, orders):
                head = reranked[task.query_ids[position]]["order"]
                new_orders.append([order[i] for i in head] + order[len(head):])
            per_task_reranked[name] = {"meta_task": task.meta_task,
                                       **task_metrics(ranks_from_orders(new_orders), config.recall_ks)}
        results["reranked"] = {"model": config.rerank.model, "backend": config.rerank.backend,
                               "mode": config.rerank.mode, "top_n": config.rerank.top_n, **summarize(per_task_reranked),
                               "fallbacks": sum(bool(row["fallback"]) for row in reranked.values()),
                               "errors": sum(bool(row["error"]) for row in reranked.values())}
        seconds["rerank"] = time.perf_counter() - started

    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    results["files"] = write_report(columns(results), out, "results")
    pq.write_table(rejects_table(rejects), out / "rejects.parquet")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    logger.info("overall precision@1 %s%s", results["overall"],
                f", reranked {results['reranked']['overall']}" if "reranked" in results else "")
    return results
