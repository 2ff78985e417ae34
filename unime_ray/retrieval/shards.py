"""Index shards as Ray actors, and query blocks searched against all of them.

Each ``IndexShard`` reads its share of the target-embedding files (round-robin over the
globally sorted file list). Every target has a key, file number << 32 | row in file,
that does not depend on the sharding; shards return their hits ordered by score and then
key, with complete tie groups at the k-th place, and ``merge_topk`` merges by the same
rule. A flat search over any number of shards therefore returns exactly what one flat
index returns, ties included. ivf and hnsw follow the same rule over the hits they find;
ivfpq over its approximate (compressed-code) scores. The driver only holds the actors'
handles; query blocks are searched by parallel Ray Data tasks (``search_dataset``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unime_ray.dataplane.io import parquet_files
from unime_ray.dataplane.stages import require_columns
from unime_ray.dataplane.tensors import vectors
from unime_ray.retrieval.config import RetrievalConfig
from unime_ray.retrieval.index import (PAD_KEY, merge_topk, needs_training, new_index, require_gpu,
                                       set_search_breadth, to_gpu)

logger = logging.getLogger(__name__)

ShardFiles = list[tuple[int, str]]  # (number in the global file order, path)


def shard_files(path: str | Path | list[str], num_shards: int) -> list[ShardFiles]:
    """The embedding table's files (a directory, a file, or a list of paths), sorted, then
    dealt round-robin to ``num_shards`` shards, each file with its global number."""
    paths = sorted(str(f) for f in path) if isinstance(path, list) else [str(f) for f in parquet_files(path)]
    numbered = list(enumerate(paths))
    return [numbered[shard::num_shards] for shard in range(num_shards)]


def valid_rows(table: pa.Table, pool: str | None = None) -> np.ndarray:
    """Row numbers with an embedding and no error (and, with ``pool``, whose ``dataset`` is
    ``pool``), ascending."""
    valid = pc.and_(pc.is_null(table["error"]), pc.is_valid(table["embedding"]))
    if pool is not None:
        valid = pc.and_(valid, pc.fill_null(pc.equal(table["dataset"], pool), False))
    return np.flatnonzero(valid.to_numpy(zero_copy_only=False))


def fetch_size(scores: np.ndarray, positions: np.ndarray, want: int) -> int | None:
    """None when every row's tie group at the ``want``-th place ends inside the fetched
    hits; else a larger fetch. ``scores``/``positions`` [n, fetch], FAISS order."""
    fetch = scores.shape[1]
    last_is_tied = (scores[:, fetch - 1] == scores[:, want - 1]) & (positions[:, fetch - 1] >= 0)  # [n]
    # -1 padding is not a tie: the index has nothing more to give for that row.
    return 2 * fetch if np.any(last_is_tied) else None


class IndexShard:
    """One FAISS index over a share of the targets, searched by key and id.

    Runs inside a Ray actor (``start_shards``); the FAISS position of a target maps to its
    key (int64, ascending with position) and its id (an Arrow string array, compact for
    millions of ids).
    """

    def __init__(self, config: dict):
        import faiss

        self.config = RetrievalConfig.model_validate(config)
        faiss.omp_set_num_threads(max(1, int(self.config.num_cpus)))  # FAISS threads = reserved CPUs
        self.index = None
        self.keys = np.empty(0, np.int64)  # [size] by FAISS position
        self.ids = pa.array([], pa.string())  # [size] by FAISS position
        self.positions = None  # id -> FAISS position (pandas Index), made at the first ``vectors`` call

    def _chunks(self, files: ShardFiles, pool: str | None):
        """(vectors [n, d] float32, keys [n] int64, ids [n] string) of the valid rows (of
        dataset ``pool`` only, when set), one file at a time, in key order."""
        for number, path in sorted(files):
            table = pq.read_table(path, columns=["id", "embedding", "error", *(["dataset"] if pool is not None else [])])
            rows = valid_rows(table, pool)
            if not rows.size:
                continue
            matrix = vectors(table["embedding"])  # [rows, d], a view of the file's buffer
            if rows.size < len(matrix):
                matrix = matrix[rows]
            ids = table["id"].combine_chunks().cast(pa.string())
            yield (np.ascontiguousarray(matrix, dtype=np.float32),
                   (np.int64(number) << 32) | rows.astype(np.int64),
                   ids if rows.size == len(ids) else ids.take(pa.array(rows)))

    def _create(self, sample: np.ndarray) -> None:
        c = self.config
        self.index = new_index(c.index, sample.shape[1], len(sample), nlist=c.nlist, pq_m=c.pq_m,
                               pq_nbits=c.pq_nbits, hnsw_m=c.hnsw_m)
        if needs_training(c.index):
            self.index.train(sample)
        set_search_breadth(self.index, c.index, c.nprobe, c.ef_search)

    def build(self, files: ShardFiles, pool: str | None = None) -> int:
        """Index ``files`` ((global number, path) pairs), only the targets of dataset ``pool``
        when it is set; returns the number of targets.

        Files are read in global order and rows in file order, so vectors are added in key
        order: FAISS position order is key order, as in one unsharded index. Vectors are
        added file by file (ivf and ivfpq first train on the first ``train_size``), so the
        shard holds its index and one file, never a second copy of its share.
        """
        if self.config.use_gpu:
            require_gpu()  # fail before reading anything
        pending: list[tuple] = []  # chunks read before the index could be created
        keys, ids = [], []
        for chunk in self._chunks(files, pool):
            if self.index is None:
                pending.append(chunk)
                if needs_training(self.config.index) and sum(len(c[0]) for c in pending) < self.config.train_size:
                    continue
                matrix = np.concatenate([c[0] for c in pending])
                self._create(matrix[: self.config.train_size])
                chunk = (matrix, np.concatenate([c[1] for c in pending]), pa.concat_arrays([c[2] for c in pending]))
                pending = []
            self.index.add(chunk[0])
            keys.append(chunk[1])
            ids.append(chunk[2])
        if pending:  # fewer vectors than train_size: train on them all
            matrix = np.concatenate([c[0] for c in pending])
            self._create(matrix)
            self.index.add(matrix)
            keys += [c[1] for c in pending]
            ids += [c[2] for c in pending]
        self.keys = np.concatenate([self.keys, *keys])
        self.ids = pa.concat_arrays([self.ids, *ids])
        if self.index is not None and self.config.use_gpu:
            self.index = to_gpu(self.index)
        logger.info("index shard: %d targets from %d files", self.size(), len(files))
        return self.size()

    def size(self) -> int:
        """Targets indexed."""
        return len(self.keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries [n, d] -> (scores float32, keys int64, ids object), each [n, k'] with
        k' = min(k, size), ordered by score and then key; -1 padding (approximate kinds)
        has key ``PAD_KEY`` and id None.

        FAISS keeps an arbitrary member of a tie group that straddles the k-th place, so
        the search fetches past k until every row's tie group at the k-th score is complete
        (rarely more than once), and the lowest keys of it are kept.
        """
        n, total = len(queries), self.size()
        if self.index is None or not total:
            return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), np.empty((n, 0), object)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        want = min(k, total)
        fetch = min(total, want + 1)
        while True:
            scores, positions = self.index.search(queries, fetch)  # [n, fetch]
            more = None if fetch == total else fetch_size(scores, positions, want)
            if more is None:
                break
            fetch = min(total, more)
        padded = positions < 0  # [n, fetch]
        keys = np.where(padded, PAD_KEY, self.keys[np.where(padded, 0, positions)])
        order = np.lexsort((keys, -np.where(padded, -np.inf, scores)), axis=-1)[:, :want]  # [n, want]
        positions = np.take_along_axis(positions, order, axis=1)
        padded = positions < 0
        taken = self.ids.take(pa.array(np.where(padded, 0, positions).reshape(-1)))
        ids = np.where(padded, None, taken.to_numpy(zero_copy_only=False).reshape(n, want))
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(keys, order, axis=1), ids

    def vectors(self, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(held [n] bool, vectors [held.sum(), d] float32): the stored vectors of those
        ``ids`` this shard indexes (exact for flat and hnsw, which keep them whole), scaled
        to unit length: a format may leave embeddings unnormalised."""
        import pandas as pd

        if self.positions is None:  # hashed once, not per call: target ids are unique (the corpus stage)
            self.positions = pd.Index(self.ids.to_numpy(zero_copy_only=False))
        positions = self.positions.get_indexer(ids.to_numpy(zero_copy_only=False))  # [n], -1: not here
        held = positions >= 0
        if not held.any():
            return held, np.empty((0, 0), np.float32)
        matrix = self.index.reconstruct_batch(positions[held].astype(np.int64))
        return held, matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    def similarities(self, ids: pa.Array, rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each of ``ids`` [m] this shard indexes with its anchor,
        ``anchors[rows[i]]`` ([n, d] unit vectors; NaN rows: unknown); NaN for the others."""
        held, matrix = self.vectors(ids)
        sims = np.full(len(ids), np.nan, np.float32)  # [m]
        if held.any():
            sims[held] = np.einsum("md,md->m", matrix, anchors[rows[held]])
        return sims

    def save(self, index_path: str, ids_path: str) -> int:
        """Write the index (a CPU copy) and the target id at each FAISS position, for the
        serving index to load; returns the dimension."""
        import faiss

        index = faiss.index_gpu_to_cpu(self.index) if self.config.use_gpu else self.index
        faiss.write_index(index, index_path)
        pq.write_table(pa.table({"id": self.ids}), ids_path)
        return int(index.d)


def start_shards(config: RetrievalConfig, num_shards: int | None = None) -> list:
    """``num_shards`` (default ``config.num_shards``) index actors, each with the config's
    resources; returns their handles (the caller builds them and kills them after)."""
    import ray

    options = {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus,
               "max_concurrency": 4}  # several query tasks search one shard at once
    if config.memory:
        options["memory"] = config.memory
    actor = ray.remote(IndexShard).options(**options)
    count = config.num_shards if num_shards is None else num_shards
    return [actor.remote(config.model_dump(mode="json")) for _ in range(count)]


@contextmanager
def index_shards(config: RetrievalConfig, path: str | Path, pool: str | None = None) -> Iterator[tuple[list, int]]:
    """``config.num_shards`` index actors built over the embedding files under ``path``
    (the targets of dataset ``pool`` only, when set): yields their handles and the number
    of targets indexed; kills them on exit, a failed build included."""
    import ray

    shards = start_shards(config)
    try:
        files = shard_files(path, len(shards))
        yield shards, sum(ray.get([shard.build.remote(share, pool) for shard, share in zip(shards, files)]))
    finally:
        for shard in shards:
            ray.kill(shard)


def list_column(values: pa.Array, kept: np.ndarray) -> pa.ListArray:
    """Row-major ``values`` of the ``kept`` [n, k] cells -> n lists of the kept cells."""
    offsets = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)  # [n + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def search_batch(batch: pa.Table, shards: list, top_k: int, positive_column: str = "positive_id") -> pa.Table:
    """Ray Data UDF (``batch_format="pyarrow"``): query rows with ``embedding`` (and
    ``positive_column``, left out of their hits) -> the rows without ``embedding``, plus
    ``candidate_ids`` (list<string>) and ``candidate_sims`` (list<float32>), best first."""
    import ray

    require_columns(batch, ["embedding"], "search")
    queries = np.ascontiguousarray(vectors(batch["embedding"]), dtype=np.float32)  # [n, d]
    exclude = (batch[positive_column].to_numpy(zero_copy_only=False)
               if positive_column in batch.column_names else None)  # [n] object
    extra = 0 if exclude is None else 1  # the positive may be among a shard's hits
    results = ray.get([shard.search.remote(queries, top_k + extra) for shard in shards])
    scores, keys, ids = merge_topk(*(list(parts) for parts in zip(*results)), k=top_k, exclude=exclude)  # [n, k]
    kept = keys != PAD_KEY  # [n, k]; fewer than k hits where the corpus is small
    return (batch.drop_columns(["embedding"])
            .append_column("candidate_ids", list_column(pa.array(ids[kept], pa.string()), kept))
            .append_column("candidate_sims", list_column(pa.array(scores[kept], pa.float32()), kept)))


def anchor_similarities(anchor_ids: pa.Array, item_ids: pa.ListArray, shards: list) -> pa.ListArray:
    """Per row, the cosine similarity of each of its ``item_ids`` with the row's anchor, the
    target ``anchor_ids[row]``, read from whichever shards hold them: list<float32> aligned
    with ``item_ids``, null where the anchor or the item is not indexed (it failed to embed,
    or is no target)."""
    import ray

    found = ray.get([shard.vectors.remote(anchor_ids) for shard in shards])
    lengths = pc.list_value_length(item_ids).fill_null(0).to_numpy()  # [n]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    items = pc.list_flatten(item_ids)  # [m]
    dims = [matrix.shape[1] for held, matrix in found if held.any()]
    if not dims or not len(items):
        return pa.ListArray.from_arrays(offsets, pa.nulls(len(items), pa.float32()))
    anchors = np.full((len(anchor_ids), dims[0]), np.nan, np.float32)  # [n, d]
    for held, matrix in found:
        if held.any():
            anchors[held] = matrix
    rows = np.repeat(np.arange(len(lengths)), lengths)  # [m]: each item's row
    parts = ray.get([shard.similarities.remote(items, rows, anchors) for shard in shards])  # each [m]
    sims = np.fmax.reduce(np.stack(parts))  # one shard holds each item: the others' NaN drop out
    return pa.ListArray.from_arrays(offsets, pa.array(sims, pa.float32(), mask=np.isnan(sims)))


def search_dataset(ds, shards: list, config: RetrievalConfig):
    """Every query block of ``ds`` searched against all shards by parallel tasks (lazy)."""
    return ds.map_batches(search_batch, fn_kwargs={"shards": shards, "top_k": config.top_k},
                          batch_size=config.query_chunk_size, num_cpus=config.search_num_cpus,
                          batch_format="pyarrow")
