"""Ray Data stages of the mining job: UDF classes that run inside actors.

Each UDF declares its input columns, returns exactly one output row per input row, and
reports a failed row in an ``error`` column instead of raising. The UDFs never touch
Ray; ``ActorStage`` holds the pool's resources and turns them into ``map_batches``
arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray import metrics
from unime_ray.data.images import ImageError, load_image
from unime_ray.failures import call_isolating_failures
from unime_ray.models.inputs import Item


ITEM_COLUMNS = ("id", "instruction", "text", "image", "image_path")


def require_columns(batch: pa.Table, columns, stage: str) -> None:
    missing = [c for c in columns if c not in batch.column_names]
    if missing:
        raise KeyError(f"{stage} stage needs columns {missing}; the batch has {batch.column_names}")


def row_item(row: dict, image_root: str | None, max_pixels: int) -> Item:
    """A corpus row as a model ``Item`` (raises ``ImageError`` on a bad image)."""
    image = load_image(row.get("image"), row.get("image_path"), image_root, max_pixels)
    return Item(row.get("instruction") or "", row.get("text") or "", image)


def table_dataset(table: pa.Table, blocks: int, batch_size: int):
    """``table`` as a Ray dataset of about ``blocks`` blocks of whole batches.

    ``from_arrow`` of one table is one block, which a single task or actor would process
    alone; slicing (no copy, no shuffle) spreads it out.
    """
    import ray.data

    rows_per_block = -(-max(1, table.num_rows) // max(1, blocks))  # ceil
    rows_per_block = -(-rows_per_block // batch_size) * batch_size
    return ray.data.from_arrow([table.slice(i, rows_per_block) for i in range(0, max(1, table.num_rows), rows_per_block)])


@dataclass
class ActorStage:
    """Resources of one actor-pool stage: what ``map_batches`` needs beside the UDF."""

    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 16

    @classmethod
    def from_config(cls, config) -> "ActorStage":
        return cls(config.num_actors, config.num_cpus, config.num_gpus, config.batch_size)

    def dataset(self, table: pa.Table, blocks_per_actor: int = 4):
        """``table`` as a Ray dataset in enough blocks to keep every actor busy."""
        return table_dataset(table, self.num_actors * blocks_per_actor, self.batch_size)

    def map_batches_kwargs(self) -> dict[str, Any]:
        import ray.data

        return {
            "compute": ray.data.ActorPoolStrategy(size=self.num_actors),
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "batch_size": self.batch_size,
            "batch_format": "pyarrow",
        }


class EmbedUDF:
    """Rows -> ``id``, ``embedding`` (float32 list, null on failure), ``error``."""

    INPUT_COLUMNS = ITEM_COLUMNS

    def __init__(self, model: str, device: str, dtype: str, image_root: str | None,
                 max_pixels: int, torch_threads: int | None = None):
        from unime_ray.models.embedder import Embedder
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        self.embedder = Embedder.from_pretrained(model, device, dtype)
        self.image_root = image_root
        self.max_pixels = max_pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "embed")
        start = time.perf_counter()
        rows = batch.to_pylist()
        items, errors = [], [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                items.append((i, row_item(row, self.image_root, self.max_pixels)))
            except ImageError as error:
                errors[i] = str(error)
        vectors: list = [None] * len(rows)
        outcomes = call_isolating_failures(self.embedder.embed, [item for _, item in items]) if items else []
        for (i, _), (vector, error) in zip(items, outcomes):
            if error is None:
                vectors[i] = vector.tolist()
            else:
                errors[i] = f"embedding failed: {error}"
        metrics.inc("rows_embedded", sum(v is not None for v in vectors))
        metrics.observe("embed_batch_seconds", time.perf_counter() - start)
        return pa.table({
            "id": batch.column("id"),
            "embedding": pa.array(vectors, pa.list_(pa.float32())),
            "error": pa.array(errors, pa.string()),
        })


def embed_dataset(table: pa.Table, embed, image_root: str | None, max_pixels: int):
    """``table``'s item rows embedded by an actor pool: a lazy dataset of ``EmbedUDF``'s
    output. ``embed`` is an ``EmbedConfig`` (model, device, dtype, pool resources)."""
    stage = ActorStage.from_config(embed)
    return stage.dataset(table.select(list(EmbedUDF.INPUT_COLUMNS))).map_batches(
        EmbedUDF,
        fn_constructor_kwargs={"model": embed.model, "device": embed.device, "dtype": embed.dtype,
                               "image_root": image_root, "max_pixels": max_pixels,
                               "torch_threads": embed.torch_threads},
        **stage.map_batches_kwargs())


class JudgeUDF:
    """One row per query -> its positive's score and every candidate's score.

    A query's pairs (positive first, then candidates in retrieval order) go to the
    engine together, so prefix caching reuses the shared query part of the prompt.
    Input: the query's item columns, ``positive_id``, ``candidate_ids``.
    Output: ``id``, ``positive_score``, ``candidate_scores`` (null where a pair failed),
    ``error`` (set when the positive pair or the query itself failed).
    """

    INPUT_COLUMNS = ITEM_COLUMNS + ("positive_id", "candidate_ids")

    def __init__(self, backend: str, targets_path: str, image_root: str | None, max_pixels: int,
                 torch_threads: int | None = None, **judge_kwargs):
        from unime_ray.mining.judge import build_judge
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        self.judge = build_judge(backend, **judge_kwargs)
        self.image_root = image_root
        self.max_pixels = max_pixels
        # The targets table (text and image references) is read once per actor.
        self.targets = {row["id"]: row for row in pq.read_table(targets_path).to_pylist()}

    def _target_item(self, target_id: str) -> Item:
        return row_item(self.targets[target_id], self.image_root, self.max_pixels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "judge")
        start = time.perf_counter()
        rows = batch.to_pylist()
        pairs, owners = [], []  # owners[i] = (row, slot): slot 0 is the positive
        errors: list[str | None] = [None] * len(rows)
        pair_errors = [[None] * (1 + len(row["candidate_ids"])) for row in rows]
        for r, row in enumerate(rows):
            try:
                query = row_item(row, self.image_root, self.max_pixels)
            except ImageError as error:
                errors[r] = f"query image: {error}"
                continue
            for slot, target_id in enumerate([row["positive_id"], *row["candidate_ids"]]):
                try:
                    pairs.append((query, self._target_item(target_id)))
                    owners.append((r, slot))
                except (ImageError, KeyError) as error:
                    pair_errors[r][slot] = f"target {target_id!r}: {error}"
        results = self.judge.score(pairs) if pairs else []
        scores: list[list[float | None]] = [[None] * len(e) for e in pair_errors]
        for (r, slot), result in zip(owners, results):
            scores[r][slot] = result.score
            pair_errors[r][slot] = result.error
        failed = sum(e is not None for per_row in pair_errors for e in per_row)
        metrics.inc("pairs_judged", len(results))
        metrics.inc("judge_errors", failed)
        metrics.observe("judge_batch_seconds", time.perf_counter() - start)
        for r in range(len(rows)):
            if errors[r] is None and scores[r][0] is None:
                errors[r] = f"positive pair failed: {pair_errors[r][0]}"
        return pa.table({
            "id": batch.column("id"),
            "positive_score": pa.array([s[0] for s in scores], pa.float64()),
            "candidate_scores": pa.array([s[1:] for s in scores], pa.list_(pa.float64())),
            "error": pa.array(errors, pa.string()),
        })


def embeddings_matrix(table: pa.Table, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Rows of an embed-stage output in the order of ``ids`` (failed rows skipped)."""
    by_id = {
        row_id: vector
        for row_id, vector in zip(table.column("id").to_pylist(), table.column("embedding").to_pylist())
        if vector is not None
    }
    kept = [i for i in ids if i in by_id]
    return np.asarray([by_id[i] for i in kept], dtype=np.float32), kept
