"""Row checks: each bad row gets a reason and goes to the rejects; the rest go on.

Per-row checks (empty item, unreadable image, path outside the root) are a batch
function mapped over the corpus. Cross-row checks (duplicate ids, unknown or rejected
positives) are a group-by and a join in Ray Data: no check holds the corpus in one place.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image

ERROR_COLUMN = "error"
FIRST_COLUMN = "first_of_id"  # one row per id is True: the unique side of a join


def row_error(row: dict, image_root: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why a query or target row cannot be used, or None."""
    has_text = bool((row.get("text") or "").strip() or (row.get("instruction") or "").strip())
    has_image = row.get("image") is not None or bool(row.get("image_path"))
    if not has_text and not has_image:
        return "empty item: no text and no image"
    try:
        load_image(row.get("image"), row.get("image_path"), image_root, max_pixels)
    except ImageError as error:
        return str(error)
    return None


def check_rows(batch: pa.Table, image_root: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> pa.Table:
    """Append an ``error`` column (null for good rows) to a batch of rows."""
    errors = [row_error(row, image_root, max_pixels) for row in batch.to_pylist()]
    return batch.append_column(ERROR_COLUMN, pa.array(errors, pa.string()))


def mark_group(group: pa.Table, kind: str) -> pa.Table:
    """The rows sharing one id: all of them are duplicates when there are several."""
    first = pa.array([True] + [False] * (group.num_rows - 1))
    if group.num_rows > 1:
        message = pa.scalar(f"duplicate {kind} id {group['id'][0].as_py()!r}")
        group = group.set_column(group.column_names.index(ERROR_COLUMN), ERROR_COLUMN,
                                 pc.coalesce(group[ERROR_COLUMN], message))
    return group.append_column(FIRST_COLUMN, first)


def mark_duplicates(ds, kind: str):
    """``ds`` (with ``error``) with duplicate ids marked and a ``first_of_id`` column."""
    return ds.groupby("id").map_groups(mark_group, fn_kwargs={"kind": kind}, batch_format="pyarrow")


def positive_status(targets):
    """One row per target id: ``positive_id``, ``positive_error`` (why it cannot be a
    positive, or null) and ``positive_known`` (always True: null after a join means unknown)."""
    def status(batch: pa.Table) -> pa.Table:
        batch = batch.filter(batch[FIRST_COLUMN])
        return pa.table({"positive_id": batch["id"], "positive_error": batch[ERROR_COLUMN],
                         "positive_known": pa.array([True] * batch.num_rows)})

    return targets.map_batches(status, batch_format="pyarrow")


def positive_error(error: str | None, positive: str | None, known: bool | None, rejected: str | None) -> str | None:
    """A query's error after its positive is looked up (the first problem found counts)."""
    if error is not None:
        return error
    if not positive:
        return "no positive_id"
    if not known:
        return f"unknown positive id {positive!r}"
    if rejected is not None:
        return f"positive target {positive!r} was rejected"
    return None


def check_positives(queries, status, num_partitions: int):
    """``queries`` (with ``error``) joined to their positives' status; the error says why a
    query's positive is missing or unusable."""
    def merge(batch: pa.Table) -> pa.Table:
        errors = [positive_error(*values) for values in zip(
            batch[ERROR_COLUMN].to_pylist(), batch["positive_id"].to_pylist(), batch["positive_known"].to_pylist(),
            batch["positive_error"].to_pylist())]
        batch = batch.drop_columns(["positive_known", "positive_error"])
        return batch.set_column(batch.column_names.index(ERROR_COLUMN), ERROR_COLUMN, pa.array(errors, pa.string()))

    joined = queries.join(status, "left_outer", num_partitions=num_partitions, on=("positive_id",))
    return joined.map_batches(merge, batch_format="pyarrow")
