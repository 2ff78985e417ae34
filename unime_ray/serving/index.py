"""The Index deployment's directory: build it from a target corpus, load it to search.

    OUT/index.faiss      inner-product FAISS index over the targets' embeddings (row i = target i)
    OUT/targets.parquet  row, id, dataset, instruction, text, image (a path relative to OUT, "" for none)
    OUT/index.json       the embedder it was built with, dimension, count, index kind
    OUT/rejects.parquet  targets left out, with the reason

Images are referenced like the mining job's records: through OUT/corpus_images (a link
to the corpus' image root) or written once under OUT/images, so OUT is self-contained.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.corpus import rejects_table
from unime_ray.serving.config import BuildIndexConfig

logger = logging.getLogger(__name__)

INDEX_FILE, TARGETS_FILE, META_FILE = "index.faiss", "targets.parquet", "index.json"
TARGET_SCHEMA = pa.schema([pa.field("row", pa.int64()), pa.field("id", pa.string()), pa.field("dataset", pa.string()),
                           pa.field("instruction", pa.string()), pa.field("text", pa.string()),
                           pa.field("image", pa.string())])


def build_index_dir(config: BuildIndexConfig) -> dict:
    """Embed the corpus' targets with a Ray Data actor pool and write OUT; returns index.json."""
    import faiss
    import ray

    from unime_ray.mining.pipeline import ImageRefs, load_corpus
    from unime_ray.mining.retrieval import build_index
    from unime_ray.mining.stages import embed_dataset, embeddings_matrix

    started = time.perf_counter()
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if Path(config.embed.model).exists():
        config.embed.model = str(Path(config.embed.model).resolve())
    if not ray.is_initialized():
        ray.init()
    corpus = load_corpus(config.corpus)
    targets = corpus.targets
    embed_dataset(targets, config.embed, corpus.image_root, config.corpus.max_image_pixels).write_parquet(
        str(out / "embeddings"))
    embedded = pq.read_table(out / "embeddings")
    vectors, kept = embeddings_matrix(embedded, targets.column("id").to_pylist())
    errors = dict(zip(embedded.column("id").to_pylist(), embedded.column("error").to_pylist()))
    ids, indexed = targets.column("id").to_pylist(), set(kept)
    rejects = [{"table": "targets", "id": i, "row": r, "reason": errors.get(i) or "not embedded"}
               for r, i in enumerate(ids) if i not in indexed]
    if not kept:
        raise SystemExit(f"no target could be embedded ({len(rejects)} rejected); see the job log")
    r = config.index
    index = build_index(vectors, r.index, nlist=r.nlist, nprobe=r.nprobe, hnsw_m=r.hnsw_m, ef_search=r.ef_search)
    faiss.write_index(index, str(out / INDEX_FILE))
    refs, by_id = ImageRefs(out, corpus.image_root), {row["id"]: row for row in targets.to_pylist()}
    rows = [{"row": n, "id": i, "dataset": by_id[i]["dataset"], "instruction": by_id[i]["instruction"] or "",
             "text": by_id[i]["text"] or "", "image": refs(by_id[i])} for n, i in enumerate(kept)]
    pq.write_table(pa.Table.from_pylist(rows, schema=TARGET_SCHEMA), out / TARGETS_FILE)
    pq.write_table(rejects_table(rejects), out / "rejects.parquet")
    meta = {"model": config.embed.model, "dim": int(vectors.shape[1]), "count": len(kept), "kind": r.index,
            "rejected": len(rejects), "seconds": round(time.perf_counter() - started, 1)}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    logger.info("indexed %d targets (%d rejected) into %s", len(kept), len(rejects), out)
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
        self.targets = pq.read_table(self.path / TARGETS_FILE).to_pylist()
        if self.index.ntotal != len(self.targets):
            raise ValueError(f"{self.path}: {self.index.ntotal} vectors but {len(self.targets)} targets")

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[dict]]:
        """For each [dim] vector, its ``top_k`` targets, best first, each with ``score``."""
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(top_k, self.index.ntotal))
        return [[{**self.targets[r], "score": float(s)} for r, s in zip(row_ids, row_scores) if r >= 0]
                for row_ids, row_scores in zip(rows, scores)]
