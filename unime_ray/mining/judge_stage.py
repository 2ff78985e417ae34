"""The judge stage: each query's pairs, with their rows joined, scored by an MLLM.

``pair_inputs`` joins every (query, candidate) pair to its target's row with Ray Data
(explode, join on the target id, group by query), so a judge actor gets text and image
bytes or paths with its batch and never loads the target table. ``JudgeUDF`` then scores
a query's pairs together (positive first, candidates in retrieval order), so the engine's
prefix cache reuses the shared query part of the prompt.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from unime_ray import metrics
from unime_ray.data.images import ImageError
from unime_ray.dataplane.stages import ITEM_COLUMNS, require_columns, row_item
from unime_ray.failures import exit_on_infrastructure_error

QUERY_COLUMNS = ITEM_COLUMNS + ("dataset", "positive_id", "row")
TARGET_FIELDS = {"id": "target_ids", "instruction": "target_instructions", "text": "target_texts",
                 "image": "target_images", "image_path": "target_image_paths"}
PAIR_SCHEMA = pa.schema([
    pa.field("query_id", pa.string()), pa.field("slot", pa.int32()),  # -1: the query's own row
    pa.field("target_id", pa.string()), pa.field("instruction", pa.string()), pa.field("text", pa.string()),
    pa.field("image", pa.binary()), pa.field("image_path", pa.string()), pa.field("dataset", pa.string()),
    pa.field("positive_id", pa.string()), pa.field("row", pa.int64()),
])


def explode_pairs(batch: pa.Table) -> pa.Table:
    """Query rows with ``candidate_ids`` -> per query, its own row (slot -1) and one row per
    pair: slot 0 is the positive, then the candidates in retrieval order."""
    rows = []
    for query in batch.select([*QUERY_COLUMNS, "candidate_ids"]).to_pylist():
        candidates = query.pop("candidate_ids")
        query_id = query.pop("id")
        rows.append({"query_id": query_id, "slot": -1, **query})
        rows += [{"query_id": query_id, "slot": slot, "target_id": target_id}
                 for slot, target_id in enumerate([query["positive_id"], *candidates])]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def target_rows(batch: pa.Table) -> pa.Table:
    """Target rows renamed for the join: ``target_id``, ``t_<column>``, ``t_found``."""
    return pa.table({"target_id": batch["id"], **{f"t_{c}": batch[c] for c in ITEM_COLUMNS[1:]},
                     "t_found": pa.array([True] * batch.num_rows)})


def assemble_query(group: pa.Table) -> pa.Table:
    """One query's joined pair rows -> its judge row: the query's item columns and, per
    pair in slot order, the target's id and columns (``target_found`` False if unknown)."""
    group = group.sort_by("slot")
    query = group.slice(0, 1)
    pairs = group.slice(1)
    columns = {"id": query["query_id"], **{c: query[c] for c in QUERY_COLUMNS[1:]}}
    lists = {"target_ids": pairs["target_id"], **{TARGET_FIELDS[c]: pairs[f"t_{c}"] for c in ITEM_COLUMNS[1:]},
             "target_found": pairs["t_found"].fill_null(False)}
    for name, values in lists.items():
        columns[name] = pa.array([values.combine_chunks()], pa.list_(values.type))
    return pa.table(columns)


def pair_inputs(candidates, targets, num_partitions: int):
    """Judge rows: ``candidates`` (query rows with ``candidate_ids``) with every pair's
    target row joined from ``targets`` (corpus rows)."""
    pairs = candidates.map_batches(explode_pairs, batch_format="pyarrow")
    joined = pairs.join(targets.map_batches(target_rows, batch_format="pyarrow"), "left_outer",
                        num_partitions=num_partitions, on=("target_id",))
    return joined.groupby("query_id").map_groups(assemble_query, batch_format="pyarrow")


def scores_column(scores: list[list[float | None]]) -> pa.ListArray:
    """Per-row score lists as a list<float64> column built from one numpy buffer."""
    lengths = np.array([len(s) for s in scores], np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.array([np.nan if v is None else v for s in scores for v in s], np.float64)
    values = pa.array(flat, pa.float64(), mask=np.isnan(flat))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class JudgeUDF:
    """Judge rows -> the same rows plus ``positive_score``, ``candidate_scores`` (null where
    a pair failed), ``pair_errors``, ``prompt_tokens`` and ``cached_tokens`` (the query's
    pairs' prompt tokens, and those the prefix cache served), and ``error`` (set when the
    query or its positive pair failed)."""

    INPUT_COLUMNS = ITEM_COLUMNS + tuple(TARGET_FIELDS.values()) + ("target_found",)

    def __init__(self, backend: str, image_root: str | None, max_pixels: int, torch_threads: int | None = None,
                 **engine_arguments):
        from unime_ray.models.engines.scoring import build_judge
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        self.judge = build_judge(backend, **engine_arguments)
        self.image_root, self.max_pixels = image_root, max_pixels

    def _targets(self, row: dict, decoded: dict) -> list:
        """Each pair's target as an Item or the error that stops it; an image used by several
        pairs of the batch is decoded once."""
        items = []
        for i, target_id in enumerate(row["target_ids"]):
            if target_id not in decoded:
                if not row["target_found"][i]:
                    decoded[target_id] = f"target {target_id!r}: not among the corpus' valid targets"
                else:
                    fields = {c: row[TARGET_FIELDS[c]][i] for c in ITEM_COLUMNS[1:]}
                    try:
                        decoded[target_id] = row_item(fields, self.image_root, self.max_pixels)
                    except ImageError as error:
                        decoded[target_id] = f"target {target_id!r}: {error}"
            items.append(decoded[target_id])
        return items

    @exit_on_infrastructure_error
    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "judge")
        start = time.perf_counter()
        rows = batch.select(list(self.INPUT_COLUMNS)).to_pylist()
        pairs, owners, decoded = [], [], {}  # owners[i] = (row, slot): slot 0 is the positive
        errors: list[str | None] = [None] * len(rows)
        pair_errors = [[None] * len(row["target_ids"]) for row in rows]
        for r, row in enumerate(rows):
            try:
                query = row_item(row, self.image_root, self.max_pixels)
            except ImageError as error:
                errors[r] = f"query image: {error}"
                continue
            for slot, target in enumerate(self._targets(row, decoded)):
                if isinstance(target, str):
                    pair_errors[r][slot] = target
                else:
                    pairs.append((query, target))
                    owners.append((r, slot))
        results = self.judge.score(pairs) if pairs else []
        scores: list[list[float | None]] = [[None] * len(e) for e in pair_errors]
        tokens, cached = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        for (r, slot), result in zip(owners, results):
            scores[r][slot] = result.score
            pair_errors[r][slot] = result.error
            tokens[r] += result.tokens or 0
            cached[r] += result.cached_tokens or 0
        metrics.inc("pairs_judged", len(results))
        metrics.inc("judge_errors", sum(e is not None for per_row in pair_errors for e in per_row))
        metrics.observe("judge_batch_seconds", time.perf_counter() - start)
        for r in range(len(rows)):
            if errors[r] is None and scores[r][0] is None:
                errors[r] = f"positive pair failed: {pair_errors[r][0]}"
        return batch.append_column("positive_score", pa.array([s[0] for s in scores], pa.float64())) \
            .append_column("candidate_scores", scores_column([s[1:] for s in scores])) \
            .append_column("pair_errors", pa.array(pair_errors, pa.list_(pa.string()))) \
            .append_column("prompt_tokens", pa.array(tokens)).append_column("cached_tokens", pa.array(cached)) \
            .append_column("error", pa.array(errors, pa.string()))
