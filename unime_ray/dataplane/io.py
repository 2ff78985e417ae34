"""Tables on disk as directories of Parquet shards, written by workers.

The driver only lists files and reads their footers (row counts); rows never pass
through it.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


def count_rows(path: str | Path | list[Path]) -> int:
    """Rows of a table (or of a list of shard files), from the files' footers."""
    files = path if isinstance(path, list) else parquet_files(path)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def column_sums(path: str | Path | list[Path], columns: list[str],
                sums: dict[str, Callable[[pa.Table], pa.Array]]) -> dict[str, int]:
    """Integer totals over a table, one shard's ``columns`` at a time: ``sums`` maps each
    total's name to the per-row values it adds up. Cheaper than planning a Ray Data
    aggregate (seconds each on small tables), and the driver holds one shard's few integer
    columns at most."""
    totals = dict.fromkeys(sums, 0)
    for file in path if isinstance(path, list) else parquet_files(path):
        table = pq.read_table(file, columns=columns)
        for name, values in sums.items():
            totals[name] += int(pc.sum(values(table)).as_py() or 0)
    return totals


def distinct_values(path: str | Path, column: str, where_null: str | None = None) -> set:
    """The distinct values of ``column`` (of the rows whose ``where_null`` column is null),
    one shard's two columns at a time: for a column of few values (datasets, tasks), which
    a Ray Data aggregate would take seconds to plan."""
    values: set = set()
    for file in parquet_files(path):
        table = pq.read_table(file, columns=[column, *([where_null] if where_null else [])])
        if where_null:
            table = table.filter(pc.is_null(table[where_null]))
        values.update(pc.unique(table[column]).to_pylist())
    return values


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


def read_dataset(path: str | Path | list[Path], columns: list[str] | None = None):
    """A table (a file or a directory of shards), or an explicit list of shard files."""
    import ray.data

    files = path if isinstance(path, list) else parquet_files(path)
    return ray.data.read_parquet([str(f) for f in files], columns=columns)


@contextmanager
def row_checkpoint(checkpoint_dir: str | Path, id_column: str) -> Iterator[None]:
    """Ray Data's row-level checkpointing for the read -> ... -> write pipelines created
    inside: each written block records its rows' ids, and on a rerun the read skips every
    id already written, so a killed job redoes only the blocks that were in flight. Data
    files of blocks whose ids were not committed are deleted by Ray before the rerun.
    ``checkpoint_dir`` must be storage every node sees (as the job's output is)."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    context = DataContext.get_current()
    previous = context.checkpoint_config
    # Kept after success: a job killed between this write and the caller recording it as
    # done must not find data files without their ids (it would write the rows twice).
    # The ids are small (8 bytes a row as ``row`` numbers) and go with the stage's output.
    context.checkpoint_config = CheckpointConfig(id_column=id_column, checkpoint_path=str(checkpoint_dir),
                                                 delete_checkpoint_on_success=False)
    try:
        yield
    finally:
        context.checkpoint_config = previous


def write_resumable(build: Callable[[], object], path: Path, checkpoint_dir: Path, id_column: str,
                    schema: pa.Schema | None = None) -> list[Path]:
    """Write the dataset ``build()`` makes under ``path``, resuming a killed earlier write
    by row (``row_checkpoint``); returns the shard files this run wrote."""
    before = set(parquet_files(path)) if path.is_dir() else set()
    with row_checkpoint(checkpoint_dir, id_column):
        write_dataset(build(), path, schema)
    return sorted(set(parquet_files(path)) - before)


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
