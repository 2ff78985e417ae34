"""Global retrieval with FAISS: each query's top-k targets of the whole corpus.

Embeddings are L2-normalised, so inner product is cosine similarity. Queries are
searched in chunks, so memory for results stays flat as the query set grows.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]


def build_index(
    targets: np.ndarray,
    kind: IndexKind = "flat",
    *,
    nlist: int = 1024,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
    use_gpu: bool = False,
):
    """An inner-product index over ``targets`` [M, D] (float32, normalised)."""
    import faiss

    targets = np.ascontiguousarray(targets, dtype=np.float32)
    dim = targets.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        # IVF needs tens of training points per list; small corpora get fewer lists.
        lists = max(1, min(nlist, targets.shape[0] // 39))
        if lists < nlist:
            logger.warning("ivf: %d targets support %d lists, not %d", targets.shape[0], lists, nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(targets)
        index.nprobe = min(nprobe, lists)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if use_gpu:
        if faiss.get_num_gpus() == 0:
            raise RuntimeError("retrieval.use_gpu is set but FAISS sees no GPU (is faiss-gpu installed?)")
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(targets)
    return index


def drop_positive(ids: np.ndarray, sims: np.ndarray, positive: int, top_k: int) -> tuple[list[int], list[float]]:
    """One query's hits without its positive and FAISS' -1 padding, cut to ``top_k``."""
    hits = [(int(i), float(s)) for i, s in zip(ids, sims) if i >= 0 and i != positive]
    hits = hits[:top_k]
    return [i for i, _ in hits], [s for _, s in hits]


def search_excluding_positive(
    index, queries: np.ndarray, positives: np.ndarray, top_k: int, chunk_size: int = 4096
) -> tuple[list[list[int]], list[list[float]]]:
    """Top-``top_k`` target rows for each query, its positive row left out."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    all_ids: list[list[int]] = []
    all_sims: list[list[float]] = []
    k = min(top_k + 1, index.ntotal)  # one extra, in case the positive is among them
    for start in range(0, queries.shape[0], chunk_size):
        sims, ids = index.search(queries[start : start + chunk_size], k)
        for row, positive in enumerate(positives[start : start + chunk_size]):
            kept_ids, kept_sims = drop_positive(ids[row], sims[row], int(positive), top_k)
            all_ids.append(kept_ids)
            all_sims.append(kept_sims)
    return all_ids, all_sims
