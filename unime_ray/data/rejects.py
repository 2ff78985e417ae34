"""Rejected rows: written by the workers that find them, counted by the driver.

A reject is (table, id, row, reason): which input table, the row's id, its number in
that table when known, and why it was left out.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from unime_ray.data.corpus import REJECT_SCHEMA
from unime_ray.data.sources import ROW_COLUMN
from unime_ray.dataplane.io import parquet_files, read_dataset, rows_where_error

REASON_KINDS = ("not found", "cannot be decoded", "escapes the image root", "empty item", "unknown positive",
                "embedding failed", "was rejected", "duplicate", "over the limit", "over the token budget",
                "non-finite score", "positive pair failed",
                "no candidate", "no positive_id")


def reason_kind(reason: str) -> str:
    """A reason without its row-specific details, for counting ('image file ... not found')."""
    return next((kind for kind in REASON_KINDS if kind in reason), reason.split(":")[0])


def as_rejects(ds, table: str, error_column: str = "error"):
    """The rows of ``ds`` whose error is set, as reject rows."""
    def rejects(batch: pa.Table) -> pa.Table:
        row = batch[ROW_COLUMN] if ROW_COLUMN in batch.column_names else pa.nulls(batch.num_rows, pa.int64())
        return pa.Table.from_arrays([pa.array([table] * batch.num_rows, pa.string()), batch["id"], row,
                                     batch[error_column]], schema=REJECT_SCHEMA)

    return rows_where_error(ds, failed=True, column=error_column).map_batches(rejects, batch_format="pyarrow")


def rejected_by_reason(rejects: Path | list[Path]) -> dict[str, int]:
    """Reject counts per kind of reason, most frequent first: a group-by whose result has
    one row per kind."""
    kinds = read_dataset(rejects, columns=["reason"]).map_batches(
        lambda b: pa.table({"kind": [reason_kind(r) for r in b["reason"].to_pylist()]}), batch_format="pyarrow")
    counts = {row["kind"]: row["count()"] for row in kinds.groupby("kind").count().take_all()}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class TooManyRejects(RuntimeError):
    """More rows were rejected than ``max_reject_fraction`` allows: most likely a broken
    corpus or a misconfigured model, not a few bad rows."""


def check_reject_fraction(rejects: list[Path], rows_in: int, max_fraction: float, stage: str) -> None:
    """Raise ``TooManyRejects`` naming the count, the fraction and the top reasons when the
    rejects (shard directories) exceed ``max_fraction`` of the ``rows_in`` input rows."""
    from unime_ray.dataplane.io import count_rows

    rejects = [path for path in rejects if path.exists()]
    rejected = sum(count_rows(path) for path in rejects)
    if rows_in and rejected / rows_in > max_fraction:
        reasons = rejected_by_reason([f for path in rejects for f in parquet_files(path)])
        top = ", ".join(f"{kind}: {n}" for kind, n in list(reasons.items())[:5])
        raise TooManyRejects(
            f"after the {stage} stage, {rejected} of {rows_in} rows are rejected ({rejected / rows_in:.1%}), "
            f"over max_reject_fraction={max_fraction:g}; top reasons: {top}. Finished stages stay "
            f"checkpointed: fix the data or raise max_reject_fraction, then rerun to resume.")
