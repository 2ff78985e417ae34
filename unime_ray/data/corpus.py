"""The corpus: queries and targets as two Arrow tables with fixed schemas.

A query names its positive target by id; images are either bytes (``image``) or paths
relative to the corpus' image root (``image_path``). On disk a corpus is a directory
with ``queries.parquet`` and ``targets.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_COMMON = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("instruction", pa.string()),
    pa.field("text", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("image_path", pa.string()),
]
TARGET_SCHEMA = pa.schema(_COMMON)
QUERY_SCHEMA = pa.schema(_COMMON + [pa.field("positive_id", pa.string())])
REJECT_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string()),  # "queries" or "targets"
        pa.field("id", pa.string()),
        pa.field("row", pa.int64()),  # row number in the input, for users to find it
        pa.field("reason", pa.string()),
    ]
)


@dataclass
class Corpus:
    """Queries, targets, and the directory that relative image paths live under."""

    queries: pa.Table
    targets: pa.Table
    image_root: str | None = None
    rejects: list[dict] = field(default_factory=list)  # input records a reader could not parse

    def __post_init__(self) -> None:
        self.queries = conform(self.queries, QUERY_SCHEMA, "queries")
        self.targets = conform(self.targets, TARGET_SCHEMA, "targets")

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.queries, directory / "queries.parquet")
        pq.write_table(self.targets, directory / "targets.parquet")

    @classmethod
    def load(cls, directory: str | Path, image_root: str | None = None) -> "Corpus":
        directory = Path(directory)
        for name in ("queries.parquet", "targets.parquet"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"corpus directory {directory} has no {name}")
        return cls(
            pq.read_table(directory / "queries.parquet"),
            pq.read_table(directory / "targets.parquet"),
            image_root,
        )


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Order and cast ``table``'s columns to ``schema``; absent optional columns are nulls."""
    columns = []
    for column in schema:
        if column.name in table.column_names:
            columns.append(table.column(column.name).cast(column.type))
        elif column.nullable:
            columns.append(pa.nulls(table.num_rows, column.type))
        else:
            raise ValueError(f"{name} table has no column {column.name!r} (it has {table.column_names})")
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"{name} table has unknown columns {sorted(extra)}")
    return pa.Table.from_arrays(columns, schema=schema)


def rejects_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
