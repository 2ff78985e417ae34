"""Per-task metrics as a Ray Data group-by: only one summary row per task reaches the driver."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.eval.metrics import task_metrics


def task_summary(group: pa.Table, ks: list[int]) -> pa.Table:
    """One task's ranked rows (``task``, ``meta_task``, ``row``, ``rank``, ``ties``, ``candidates``) ->
    one row: ``task``, ``meta_task``, ``candidates`` (the longest list) and
    ``metrics.task_metrics``."""
    # In file order, as a plain loop over the task would sum them: the means come out
    # the same to the last bit, whatever order the shuffle delivered the rows in.
    ordered = group.sort_by("row")
    values = task_metrics(ordered["rank"].to_numpy(), ks, ordered["ties"].to_numpy())
    return pa.table({"task": group["task"].slice(0, 1), "meta_task": group["meta_task"].slice(0, 1),
                     "candidates": [pc.max(group["candidates"]).as_py()], **{k: [v] for k, v in values.items()}})


def task_summaries(ranked, ks: list[int], num_partitions: int) -> dict[str, dict]:
    """Task -> its summary row, over ``ranked``'s rows (the queries that count: rejected
    ones filtered out); a task with no row is absent."""
    rows = ranked.select_columns(["task", "meta_task", "row", "rank", "ties", "candidates"])
    summaries = rows.groupby("task", num_partitions=num_partitions).map_groups(
        task_summary, fn_kwargs={"ks": ks}, batch_format="pyarrow")
    return {row["task"]: row for row in summaries.take_all()}
