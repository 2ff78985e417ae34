"""Tables on disk as directories of Parquet shards, written by workers.

The driver only lists files and reads their footers (row counts); rows never pass
through it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files of a table: the file itself, or a directory's shards in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no Parquet table at {path}")
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def count_rows(path: str | Path) -> int:
    """Rows of a table, from the files' footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def write_dataset(ds, path: str | Path, schema: pa.Schema | None = None) -> int:
    """Write ``ds`` as Parquet shards under ``path``; returns the row count.

    A dataset with no rows still leaves one empty file with ``schema``, so readers of
    ``path`` always find a table.
    """
    path = Path(path)
    # A group-by's output block holds a chunk per group; Parquet would store each as a row group.
    whole = ds.map_batches(lambda block: block.combine_chunks(), batch_format="pyarrow", batch_size=None)
    whole.write_parquet(str(path))
    if not path.exists() or not parquet_files(path):
        if schema is None:
            raise ValueError(f"nothing was written to {path} and no schema was given for an empty table")
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), path / "empty.parquet")
    return count_rows(path)


def read_dataset(path: str | Path, columns: list[str] | None = None):
    import ray.data

    return ray.data.read_parquet([str(f) for f in parquet_files(path)], columns=columns)


def rows_where_error(ds, failed: bool, column: str = "error"):
    """The rows whose ``column`` is set (``failed``) or null."""
    def keep(batch: pa.Table) -> pa.Table:
        mask = pc.is_valid(batch[column]) if failed else pc.is_null(batch[column])
        return batch.filter(mask)

    return ds.map_batches(keep, batch_format="pyarrow", zero_copy_batch=True)


def publish(sources: dict[str, Path], target: Path) -> Path:
    """Make ``target`` a directory of the sources' shards, atomically (hard links where the
    filesystem allows, else copies); each source's files are prefixed with its key."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for prefix, source in sources.items():
        for number, file in enumerate(parquet_files(source)):
            link = tmp / f"{prefix}-{number:05d}.parquet"
            try:
                os.link(file, link)
            except OSError:
                shutil.copyfile(file, link)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(tmp, target)
    return target
