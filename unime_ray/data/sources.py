"""A corpus as two Ray Datasets, each row numbered by its place in the input.

Parquet corpora are read row group by row group (a task each); the built-in sources
(easy-VQA, UniME-V2 JSON) are built by a Ray task that writes Parquet first, so the
corpus never passes through the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.config import CorpusConfig
from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA, Corpus, conform, rejects_table
from unime_ray.dataplane.io import parquet_files

ROW_COLUMN = "row"  # a row's number in its input table, for users to find it


@dataclass(frozen=True)
class CorpusFiles:
    queries: str  # a Parquet file or a directory of shards
    targets: str
    image_root: str | None
    rejects: str | None = None  # records the source's reader could not parse


def _write_corpus(corpus: Corpus, out: Path) -> CorpusFiles:
    corpus.save(out)
    pq.write_table(rejects_table(corpus.rejects), out / "rejects.parquet")
    return CorpusFiles(str(out / "queries.parquet"), str(out / "targets.parquet"), corpus.image_root,
                       str(out / "rejects.parquet"))


def _build_source(config: CorpusConfig, out: str) -> CorpusFiles:
    if config.source == "easyvqa":
        from unime_ray.data.easyvqa import build_easyvqa_corpus

        return _write_corpus(build_easyvqa_corpus(config.num_images, config.seed), Path(out))
    from unime_ray.data.unime_json import read_unime_json

    return _write_corpus(read_unime_json(config.path, config.image_root), Path(out))


def corpus_files(config: CorpusConfig, scratch: Path) -> CorpusFiles:
    """Where the corpus' tables are; built-in sources are first written under ``scratch``
    by a Ray task (which holds the source, the driver does not)."""
    if config.source == "parquet":
        root = Path(config.path)
        for name in ("queries", "targets"):
            if not any(root.glob(f"{name}.parquet")):
                raise FileNotFoundError(f"corpus directory {root} has no {name}.parquet")
        return CorpusFiles(str(root / "queries.parquet"), str(root / "targets.parquet"), config.image_root)
    import ray

    scratch.mkdir(parents=True, exist_ok=True)
    files = ray.get(ray.remote(_build_source).options(num_cpus=0.5).remote(config, str(scratch)))
    return CorpusFiles(files.queries, files.targets, config.image_root or files.image_root, files.rejects)


def _fragments(path: str, limit: int | None) -> list[dict]:
    """(file, row group, first row number, rows to keep) of every row group holding one of
    the first ``limit`` rows (all if None), in input order."""
    fragments, offset = [], 0
    for file in parquet_files(path):
        meta = pq.ParquetFile(file).metadata
        for group in range(meta.num_row_groups):
            if limit is not None and offset >= limit:
                return fragments
            rows = meta.row_group(group).num_rows
            keep = rows if limit is None else min(rows, limit - offset)
            fragments.append({"path": str(file), "row_group": group, "offset": offset, "keep": keep})
            offset += rows
    return fragments


def _read_fragments(batch: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    tables = []
    for fragment in batch.to_pylist():
        group = pq.ParquetFile(fragment["path"]).read_row_group(fragment["row_group"])
        table = conform(group.slice(0, fragment["keep"]), schema, name)
        rows = pa.array(range(fragment["offset"], fragment["offset"] + table.num_rows), pa.int64())
        tables.append(table.append_column(ROW_COLUMN, rows))
    return pa.concat_tables(tables)


def read_numbered(path: str, schema: pa.Schema, name: str, limit: int | None = None):
    """The table at ``path`` conformed to ``schema``, with a ``row`` column; ``limit`` keeps
    its first N rows by number (``Dataset.limit`` would keep whichever blocks finish first,
    which a resumed job could not reproduce). Rows come in no particular order."""
    import ray.data

    fragments = _fragments(path, limit)
    if not fragments:
        raise ValueError(f"{name} table at {path} has no rows")
    return ray.data.from_items(fragments, override_num_blocks=len(fragments)).map_batches(
        _read_fragments, fn_kwargs={"schema": schema, "name": name}, batch_size=1, batch_format="pyarrow",
        num_cpus=0.25)


def read_corpus(files: CorpusFiles, limit: int | None = None):
    """(queries, targets) datasets; ``limit`` keeps the first N queries."""
    return (read_numbered(files.queries, QUERY_SCHEMA, "queries", limit),
            read_numbered(files.targets, TARGET_SCHEMA, "targets"))

