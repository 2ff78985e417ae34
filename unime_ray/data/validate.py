"""Row checks: each bad row gets a reason and goes to the rejects; the rest go on.

Per-row checks (empty item, unreadable image, path outside the root) are a batch
function that Ray Data maps over the corpus, so they scale with it. Cross-row checks
(unknown or rejected positive, duplicate ids) need only the id columns and run here.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image

ERROR_COLUMN = "error"


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


def _duplicates(ids: pa.Array) -> set[str]:
    counts = pc.value_counts(ids)
    return {item["values"] for item in counts.to_pylist() if item["counts"] > 1}


def cross_row_errors(queries: pa.Table, targets: pa.Table) -> tuple[list[str | None], list[str | None]]:
    """Errors that need the whole corpus: duplicate ids, unknown or rejected positives.

    Both tables carry the per-row ``error`` column already; the returned lists merge it
    with the new checks, row for row.
    """
    dup_targets = _duplicates(targets.column("id"))
    target_errors = [
        err or (f"duplicate target id {tid!r}" if tid in dup_targets else None)
        for tid, err in zip(targets.column("id").to_pylist(), targets.column(ERROR_COLUMN).to_pylist())
    ]
    good_targets = {tid for tid, err in zip(targets.column("id").to_pylist(), target_errors) if err is None}
    all_targets = set(targets.column("id").to_pylist())
    dup_queries = _duplicates(queries.column("id"))
    query_errors = []
    for qid, pos, err in zip(
        queries.column("id").to_pylist(),
        queries.column("positive_id").to_pylist(),
        queries.column(ERROR_COLUMN).to_pylist(),
    ):
        if err is None and qid in dup_queries:
            err = f"duplicate query id {qid!r}"
        if err is None and not pos:
            err = "no positive_id"
        elif err is None and pos not in all_targets:
            err = f"unknown positive id {pos!r}"
        elif err is None and pos not in good_targets:
            err = f"positive target {pos!r} was rejected"
        query_errors.append(err)
    return query_errors, target_errors
