"""Index shards as Ray actors, and query blocks searched against all of them.

Each ``IndexShard`` reads its share of the target-embedding files (round-robin over the
globally sorted file list). Every target has a key, file number << 32 | row in file,
that does not depend on the sharding; shards return their hits ordered by score and then
key, with complete tie groups at the k-th place, and ``merge_topk`` merges by the same
rule. A flat search over any number of shards therefore returns exactly what one flat
index returns, ties included. The driver only holds the actors' handles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unime_ray.dataplane.io import parquet_files
from unime_ray.dataplane.tensors import vectors
from unime_ray.retrieval.config import RetrievalConfig
from unime_ray.retrieval.index import PAD_KEY, merge_topk, needs_training, new_index, set_search_breadth, to_gpu

logger = logging.getLogger(__name__)

ShardFiles = list[tuple[int, str]]  # (number in the global file order, path)


def shard_files(path: str | Path, num_shards: int) -> list[ShardFiles]:
    """The embedding table's files dealt round-robin to ``num_shards`` shards."""
    files = list(enumerate(str(f) for f in parquet_files(path)))
    return [files[shard::num_shards] for shard in range(num_shards)]


class IndexShard:
    """One FAISS index over a share of the targets, searched by key and id."""

    def __init__(self, config: dict):
        import faiss

        self.config = RetrievalConfig.model_validate(config)
        faiss.omp_set_num_threads(max(1, int(self.config.num_cpus)))
        self.index = None
        self.keys = np.empty(0, np.int64)  # by FAISS position
        self.ids = np.empty(0, object)

    def _chunks(self, files: ShardFiles):
        """(vectors [n, d] float32, keys [n], ids [n]) of the valid rows, file by file."""
        for number, path in files:
            table = pq.read_table(path, columns=["id", "embedding", "error"])
            valid = pc.and_(pc.is_null(table["error"]), pc.is_valid(table["embedding"])).to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(valid)
            if rows.size:
                yield (vectors(table["embedding"])[rows].astype(np.float32),
                       (np.int64(number) << 32) | rows.astype(np.int64),
                       np.asarray(table["id"].to_pylist(), dtype=object)[rows])

    def _add(self, matrix: np.ndarray, keys: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(matrix))
        self.keys = np.concatenate([self.keys, keys])
        self.ids = np.concatenate([self.ids, ids])

    def _create(self, sample: np.ndarray) -> None:
        c = self.config
        self.index = new_index(c.index, sample.shape[1], len(sample), nlist=c.nlist, pq_m=c.pq_m,
                               pq_nbits=c.pq_nbits, hnsw_m=c.hnsw_m)
        if needs_training(c.index):
            self.index.train(np.ascontiguousarray(sample))
        set_search_breadth(self.index, c.index, c.nprobe, c.ef_search)

    def build(self, files: ShardFiles) -> int:
        """Index ``files`` in order; returns the number of targets indexed. Vectors are added
        file by file (quantizers train on the first ``train_size`` first), so the shard holds
        its index and one file, not a second copy of its share."""
        pending: list[tuple] = []
        for chunk in self._chunks(files):
            if self.index is None:
                pending.append(chunk)
                if needs_training(self.config.index) and sum(len(c[0]) for c in pending) < self.config.train_size:
                    continue
                self._create(np.concatenate([c[0] for c in pending])[: self.config.train_size])
                chunk, pending = tuple(np.concatenate(parts) for parts in zip(*pending)), []
            self._add(*chunk)
        if pending:  # fewer vectors than train_size: train on them all
            self._create(np.concatenate([c[0] for c in pending]))
            self._add(*(np.concatenate(parts) for parts in zip(*pending)))
        if self.index is not None and self.config.use_gpu:
            self.index = to_gpu(self.index)
        logger.info("index shard: %d targets from %d files", len(self.keys), len(files))
        return len(self.keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, keys, ids), each [n, k] (narrower when the shard holds fewer targets),
        ordered by score and then key.

        FAISS keeps an arbitrary member of a tie group that straddles the k-th place, so
        the search fetches past k until every row's tie group at the k-th score is complete
        (rarely more than once), and the lowest keys of it are kept.
        """
        n, total = len(queries), len(self.keys)
        if self.index is None or not total:
            return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), np.empty((n, 0), object)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        want = min(k, total)
        fetch = min(total, want + 1)
        while True:
            scores, positions = self.index.search(queries, fetch)  # [n, fetch]
            if fetch == total or not np.any(scores[:, fetch - 1] == scores[:, want - 1]):
                break
            fetch = min(total, 2 * fetch)
        padded = positions < 0
        keys = np.where(padded, PAD_KEY, self.keys[np.where(padded, 0, positions)])
        order = np.lexsort((keys, -np.where(padded, -np.inf, scores)), axis=-1)[:, :want]
        positions = np.take_along_axis(positions, order, axis=1)
        padded = positions < 0
        ids = np.where(padded, None, self.ids[np.where(padded, 0, positions)])
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(keys, order, axis=1), ids

    def save(self, index_path: str, ids_path: str) -> int:
        """Write the index (on the CPU) and the target id at each position; returns the dimension."""
        import faiss

        index = faiss.index_gpu_to_cpu(self.index) if self.config.use_gpu else self.index
        faiss.write_index(index, index_path)
        pq.write_table(pa.table({"id": pa.array(self.ids.tolist(), pa.string())}), ids_path)
        return int(index.d)


def start_shards(config: RetrievalConfig) -> list:
    """``config.num_shards`` index actors, each with the config's resources."""
    import ray

    options = {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus, "max_concurrency": 4}
    if config.memory:
        options["memory"] = config.memory
    actor = ray.remote(IndexShard).options(**options)
    return [actor.remote(config.model_dump(mode="json")) for _ in range(config.num_shards)]


def search_batch(batch: pa.Table, shards: list, top_k: int) -> pa.Table:
    """Query rows with ``embedding`` (and ``positive_id``, left out of their hits) -> the
    rows without ``embedding``, plus ``candidate_ids`` and ``candidate_sims``, best first."""
    import ray

    queries = vectors(batch["embedding"]).astype(np.float32)  # [n, d]
    exclude = np.asarray(batch["positive_id"].to_pylist(), object) if "positive_id" in batch.column_names else None
    extra = 0 if exclude is None else 1  # the positive may be among a shard's hits
    results = ray.get([shard.search.remote(queries, top_k + extra) for shard in shards])
    scores, keys, ids = merge_topk(*(list(parts) for parts in zip(*results)), k=top_k, exclude=exclude)
    kept = keys != PAD_KEY  # [n, k]
    offsets = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)
    candidate_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[kept].tolist(), pa.string()))
    candidate_sims = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[kept], pa.float32()))
    return batch.drop_columns(["embedding"]).append_column("candidate_ids", candidate_ids) \
        .append_column("candidate_sims", candidate_sims)


def search_dataset(ds, shards: list, config: RetrievalConfig):
    """Every query block of ``ds`` searched against all shards by parallel tasks (lazy)."""
    return ds.map_batches(search_batch, fn_kwargs={"shards": shards, "top_k": config.top_k},
                          batch_size=config.query_chunk_size, num_cpus=config.search_num_cpus,
                          batch_format="pyarrow")
