"""The judge stage: each query's pairs, with their rows joined, scored by an MLLM.

``pair_inputs`` joins every (query, candidate) pair to its target's row with Ray Data
(explode, join on the target id, group by query), so a judge actor gets text and image
bytes or paths with its batch and never loads the target table. ``judge_dataset`` then
runs two stages, as ``ray.data.llm`` does:

- ``JudgePrepUDF``, a CPU actor pool: images decoded (a target once per batch), fitted to
  the judge's pixel budget, prompts rendered and their tokens counted against the budget;
- ``JudgeUDF``, the engine's pool: the model only, with several batches in the engine at
  once (``max_concurrent_batches``) so its scheduler never waits for the next batch.

A query's pairs are scored together (positive first, candidates in retrieval order), so
the engine's prefix cache reuses the shared query part of the prompt.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa

from unime_ray import metrics
from unime_ray.data.images import ImageError
from unime_ray.dataplane.stages import (ITEM_COLUMNS, PIXELS, ActorStage, from_pixels, pixels, require_columns,
                                       row_item, set_column)
from unime_ray.failures import exit_on_infrastructure_error
from unime_ray.models.engines.scoring import JudgeRequest, JudgeResult, prepare_pair
from unime_ray.models.inputs import Item, fit_item

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


# What the CPU stage hands the engine stage; dropped from the engine stage's output.
PREPARED_COLUMNS = ("pair_prompts", "pair_tokens", "query_pixels", "target_pixels")


def scores_column(scores: list[list[float | None]]) -> pa.ListArray:
    """Per-row score lists as a list<float64> column built from one numpy buffer."""
    lengths = np.array([len(s) for s in scores], np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.array([np.nan if v is None else v for s in scores for v in s], np.float64)
    values = pa.array(flat, pa.float64(), mask=np.isnan(flat))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class JudgePrepUDF:
    """Judge rows -> the same rows plus, per pair, its rendered prompt and token count or
    its error (``pair_errors``: target unknown or undecodable, pair over the token budget,
    an image the processor refuses), the images fitted to the budget as raw RGB, and
    ``error`` for a query whose own image fails. Needs the processor only, no model."""

    INPUT_COLUMNS = ITEM_COLUMNS + tuple(TARGET_FIELDS.values()) + ("target_found",)

    def __init__(self, model: str, image_root: str | None, decode_max_pixels: int, max_model_len: int,
                 min_pixels: int | None, max_pixels: int | None, format: str | None = None):
        from unime_ray.models.formats import resolve_prompt_format
        from unime_ray.models.loading import load_processor

        self.processor = load_processor(model, min_pixels, max_pixels)
        self.prompts = resolve_prompt_format(model, format)
        self.image_root, self.decode_max_pixels = image_root, decode_max_pixels
        self.max_prompt_tokens = max_model_len - 1  # and one answer token

    def _item(self, fields: dict) -> Item:
        """Decoded and fitted; raises ``ImageError``, or ``ValueError`` for an image the
        processor refuses (e.g. its aspect ratio)."""
        return fit_item(self.processor.image_processor, row_item(fields, self.image_root, self.decode_max_pixels))

    def _targets(self, row: dict, decoded: dict) -> list:
        """Each pair's target as an Item or the error that stops it; an image used by several
        pairs of the batch is decoded and fitted once."""
        items = []
        for i, target_id in enumerate(row["target_ids"]):
            if target_id not in decoded:
                if not row["target_found"][i]:
                    decoded[target_id] = f"target {target_id!r}: not among the corpus' valid targets"
                else:
                    try:
                        decoded[target_id] = self._item({c: row[TARGET_FIELDS[c]][i] for c in ITEM_COLUMNS[1:]})
                    except (ImageError, ValueError) as error:
                        decoded[target_id] = f"target {target_id!r}: {error}"
            items.append(decoded[target_id])
        return items

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "judge preparation")
        rows = batch.select(list(self.INPUT_COLUMNS)).to_pylist()
        decoded: dict = {}
        errors: list[str | None] = [None] * len(rows)
        columns = {name: [[None] * len(row["target_ids"]) for row in rows]
                   for name in ("pair_prompts", "pair_tokens", "pair_errors", "target_pixels")}
        query_pixels: list[dict | None] = [None] * len(rows)
        for r, row in enumerate(rows):
            try:
                query = self._item(row)
            except (ImageError, ValueError) as error:
                errors[r] = f"query image: {error}"
                continue
            query_pixels[r] = pixels(query.image)
            for slot, target in enumerate(self._targets(row, decoded)):
                prepared = target if isinstance(target, str) else prepare_pair(self.processor, (query, target),
                                                                                 self.max_prompt_tokens, self.prompts)
                if isinstance(prepared, str):
                    columns["pair_errors"][r][slot] = prepared
                elif isinstance(prepared, JudgeResult):
                    columns["pair_errors"][r][slot] = prepared.error
                    columns["pair_tokens"][r][slot] = prepared.tokens
                else:
                    columns["pair_prompts"][r][slot] = prepared.prompt
                    columns["pair_tokens"][r][slot] = prepared.tokens
                    columns["target_pixels"][r][slot] = pixels(target.image)
        types = {"pair_prompts": pa.list_(pa.string()), "pair_tokens": pa.list_(pa.int64()),
                 "pair_errors": pa.list_(pa.string()), "target_pixels": pa.list_(PIXELS)}
        for name, values in columns.items():
            batch = set_column(batch, name, pa.array(values, types[name]))
        return set_column(set_column(batch, "query_pixels", pa.array(query_pixels, PIXELS)),
                          "error", pa.array(errors, pa.string()))


class JudgeUDF:
    """Prepared judge rows (``JudgePrepUDF``) -> the rows without the preparation's columns,
    plus ``positive_score``, ``candidate_scores`` (null where a pair failed),
    ``pair_errors``, ``prompt_tokens`` and ``cached_tokens`` (the query's pairs' prompt
    tokens, and those the prefix cache served), and ``error`` (set when the query or its
    positive pair failed).

    Async: Ray Data hands an actor several batches at once; up to
    ``max_concurrent_batches`` of them are in the engine together."""

    INPUT_COLUMNS = ("target_ids", "pair_errors", "error") + PREPARED_COLUMNS

    def __init__(self, backend: str, max_concurrent_batches: int, torch_threads: int | None = None,
                 **engine_arguments):
        from unime_ray.models.engines.scoring import build_judge
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        self.judge = build_judge(backend, **engine_arguments)
        self.max_concurrent_batches = max_concurrent_batches
        self.slots: asyncio.Semaphore | None = None  # made on the actor's event loop, at the first batch
        self.in_flight = self.peak_in_flight = 0

    def _requests(self, rows: list[dict]) -> tuple[list[JudgeRequest], list[tuple[int, int]]]:
        """The prepared pairs to score and, for each, its (row, slot)."""
        requests, owners, images = [], [], {}
        for r, row in enumerate(rows):
            if row["error"] is not None:
                continue
            query = [from_pixels(row["query_pixels"])] if row["query_pixels"] else []
            for slot, prompt in enumerate(row["pair_prompts"]):
                if prompt is None:
                    continue
                target, target_id = row["target_pixels"][slot], row["target_ids"][slot]
                if target and target_id not in images:
                    images[target_id] = from_pixels(target)
                requests.append(JudgeRequest(prompt, tuple(query + ([images[target_id]] if target else [])),
                                             row["pair_tokens"][slot]))
                owners.append((r, slot))
        return requests, owners

    async def _score(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.max_concurrent_batches)
        async with self.slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            metrics.set_gauge("judge_batches_in_flight", self.in_flight, {})
            try:
                return await self.judge.score_prepared(requests)
            finally:
                self.in_flight -= 1

    @exit_on_infrastructure_error
    async def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "judge")
        start = time.perf_counter()
        rows = batch.select(list(self.INPUT_COLUMNS)).to_pylist()
        requests, owners = self._requests(rows)
        results = await self._score(requests) if requests else []
        pair_errors = [row["pair_errors"] for row in rows]
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
        errors = [row["error"] for row in rows]
        for r in range(len(rows)):
            if errors[r] is None and scores[r][0] is None:
                errors[r] = f"positive pair failed: {pair_errors[r][0]}"
        batch = batch.drop_columns(list(PREPARED_COLUMNS))
        batch = set_column(batch, "pair_errors", pa.array(pair_errors, pa.list_(pa.string())))
        return set_column(batch, "error", pa.array(errors, pa.string())) \
            .append_column("positive_score", pa.array([s[0] for s in scores], pa.float64())) \
            .append_column("candidate_scores", scores_column([s[1:] for s in scores])) \
            .append_column("prompt_tokens", pa.array(tokens)).append_column("cached_tokens", pa.array(cached))


def judge_dataset(rows, j, image_root: str | None, decode_max_pixels: int, udf: type = JudgeUDF,
                  udf_arguments: dict | None = None):
    """Judge rows (``pair_inputs``) -> judged rows: the CPU preparation pool, then the
    engine pool. ``j`` is the ``JudgeConfig``; ``udf`` and ``udf_arguments`` let a test put
    a subclass of ``JudgeUDF`` in the engine stage."""
    import ray.data

    stage = ActorStage.from_config(j)
    prepared = stage.blocks(rows).map_batches(
        JudgePrepUDF,
        fn_constructor_kwargs={"model": j.model, "image_root": image_root, "decode_max_pixels": decode_max_pixels,
                               "max_model_len": j.max_model_len, "min_pixels": j.min_pixels,
                               "max_pixels": j.max_pixels, "format": j.format},
        compute=ray.data.ActorPoolStrategy(size=j.prep_actors), num_cpus=j.prep_num_cpus, batch_size=j.batch_size,
        batch_format="pyarrow", max_restarts=j.max_restarts)
    return prepared.map_batches(
        udf,
        fn_constructor_kwargs={"backend": j.backend, "max_concurrent_batches": j.max_concurrent_batches,
                               "torch_threads": j.torch_threads, **j.engine_arguments(), **(udf_arguments or {})},
        # Tasks (blocks) an actor runs at once; the UDF's semaphore bounds the batches in its engine.
        max_concurrency=j.max_concurrent_batches, **stage.map_batches_kwargs())
