"""The Index deployment's directory: build it from a target corpus, load it to search.

    OUT/index.faiss        inner-product FAISS index over the targets' embeddings
    OUT/index_ids.parquet  the target id at each index position
    OUT/targets.parquet/   id, dataset, instruction, text, image (a path relative to OUT, "" for none)
    OUT/index.json         the embedder it was built with, dimension, count, index kind
    OUT/rejects.parquet/   targets left out, with the reason

Embedding runs in a Ray Data actor pool and the index is built inside an index actor, so
the job's driver holds neither vectors nor rows. Images are referenced like the mining
job's records (``unime_ray.data.image_refs``), so OUT is self-contained.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.corpus import REJECT_SCHEMA
from unime_ray.data.image_refs import image_ref, link_image_root
from unime_ray.data.rejects import as_rejects
from unime_ray.data.sources import corpus_files, read_corpus
from unime_ray.dataplane.embed_stage import embed_dataset
from unime_ray.dataplane.io import read_dataset, rows_where_error, write_dataset
from unime_ray.serving.config import BuildIndexConfig

logger = logging.getLogger(__name__)

INDEX_FILE, IDS_FILE, TARGETS_FILE, META_FILE = "index.faiss", "index_ids.parquet", "targets.parquet", "index.json"
TARGET_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("dataset", pa.string()),
                           pa.field("instruction", pa.string()), pa.field("text", pa.string()),
                           pa.field("image", pa.string())])


def served_targets(batch: pa.Table, output_dir: str) -> pa.Table:
    """Embedded target rows -> what a search hit shows (image as a reference under OUT)."""
    rows = batch.select(["id", "dataset", "instruction", "text", "image", "image_path"]).to_pylist()
    return pa.Table.from_pylist([{"id": r["id"], "dataset": r["dataset"], "instruction": r["instruction"] or "",
                                  "text": r["text"] or "", "image": image_ref(output_dir, r["image"], r["image_path"])}
                                 for r in rows], schema=TARGET_SCHEMA)


def build_index_dir(config: BuildIndexConfig) -> dict:
    """Embed the corpus' targets and write OUT (on the connected Ray cluster); returns index.json."""
    import ray

    from unime_ray.retrieval.shards import index_shards

    started = time.perf_counter()
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if Path(config.embed.model).exists():
        config.embed.model = str(Path(config.embed.model).resolve())
    files = corpus_files(config.corpus, out / "source")
    _, targets = read_corpus(files)
    write_dataset(embed_dataset(targets, config.embed, files.image_root, config.corpus.max_image_pixels),
                  out / "embeddings")
    embedded = read_dataset(out / "embeddings")
    rejected = write_dataset(as_rejects(embedded, "targets"), out / "rejects.parquet", REJECT_SCHEMA)
    link_image_root(out, files.image_root)
    kept = write_dataset(rows_where_error(embedded, failed=False).map_batches(
        served_targets, fn_kwargs={"output_dir": str(out)}, batch_format="pyarrow"), out / TARGETS_FILE, TARGET_SCHEMA)
    if not kept:
        raise SystemExit(f"no target could be embedded ({rejected} rejected); see {out / 'rejects.parquet'}")
    r = config.index.model_copy(update={"num_shards": 1})  # the service loads one index file
    with index_shards(r, out / "embeddings") as ([shard], _):
        dim = ray.get(shard.save.remote(str(out / INDEX_FILE), str(out / IDS_FILE)))
    meta = {"model": config.embed.model, "dim": int(dim), "count": kept, "kind": r.index, "rejected": rejected,
            "seconds": round(time.perf_counter() - started, 1)}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    logger.info("indexed %d targets (%d rejected) into %s", kept, rejected, out)
    return meta


class LoadedIndex:
    """A built directory in memory: search returns target rows with their scores."""

    def __init__(self, path: str | Path, use_gpu: bool = False):
        import faiss

        self.path = Path(path)
        self.meta = json.loads((self.path / META_FILE).read_text())
        self.index = faiss.read_index(str(self.path / INDEX_FILE))
        if use_gpu:
            self.index = faiss.index_cpu_to_all_gpus(self.index)
        # The replica's own copy of what hits show, in index order (ids are unique).
        ids = pq.read_table(self.path / IDS_FILE).column("id")
        targets = pq.read_table(self.path / TARGETS_FILE)
        position = pa.table({"id": ids, "position": pa.array(np.arange(len(ids)), pa.int64())})
        ordered = position.join(targets, "id", join_type="inner").sort_by("position").drop_columns(["position"])
        if self.index.ntotal != ordered.num_rows or ordered.num_rows != len(ids):
            raise ValueError(f"{self.path}: {self.index.ntotal} vectors, {len(ids)} ids, {ordered.num_rows} targets")
        self.targets = ordered.to_pylist()

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        """For each [dim] vector, its ``top_k`` targets, best first, each with ``score``."""
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(top_k, self.index.ntotal))
        return [[{**self.targets[r], "score": float(s)} for r, s in zip(row_ids, row_scores) if r >= 0]
                for row_ids, row_scores in zip(rows, scores)]
