"""FAISS indexes and the exact merge of per-shard results: pure functions, no Ray.

Embeddings are L2-normalised, so inner product is cosine similarity. Every hit carries
an integer key (its insertion position in the global order of target files); results
are ordered by score, then by key, so ties break the same way however the targets are
sharded. ``ivfpq`` scores are computed from compressed codes: its order (ties included)
follows those approximate scores, not the exact inner products.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

PAD_KEY = np.iinfo(np.int64).max  # FAISS' -1 padding and excluded hits sort last


def new_index(kind: str, dim: int, num_train: int, *, nlist: int = 1024, pq_m: int = 16, pq_nbits: int = 8,
              hnsw_m: int = 32):
    """An empty inner-product index; ``num_train`` vectors will train it (ivf, ivfpq)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    if kind not in ("ivf", "ivfpq"):
        raise ValueError(f"unknown index kind {kind!r}")
    # IVF needs tens of training points per list; small corpora get fewer lists.
    lists = max(1, min(nlist, num_train // 39))
    if lists < nlist:
        logger.warning("%s: %d training vectors support %d lists, not %d", kind, num_train, lists, nlist)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    if dim % pq_m:
        raise ValueError(f"ivfpq: pq_m={pq_m} does not divide the embedding dimension {dim}")
    # Each sub-quantizer has 2**nbits centroids, which need at least as many training vectors.
    nbits = max(1, min(pq_nbits, int(np.log2(max(2, num_train)))))
    if nbits < pq_nbits:
        logger.warning("ivfpq: %d training vectors support %d-bit codes, not %d", num_train, nbits, pq_nbits)
    return faiss.IndexIVFPQ(quantizer, dim, lists, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)


def needs_training(kind: str) -> bool:
    return kind in ("ivf", "ivfpq")


def set_search_breadth(index, kind: str, nprobe: int, ef_search: int) -> None:
    """Lists probed (ivf, ivfpq; at most the lists there are) or graph breadth (hnsw)."""
    if needs_training(kind):
        index.nprobe = min(nprobe, index.nlist)
    elif kind == "hnsw":
        index.hnsw.efSearch = ef_search


def require_gpu() -> None:
    """Raise unless FAISS sees a GPU (checked before a shard reads any file)."""
    import faiss

    if faiss.get_num_gpus() == 0:
        raise RuntimeError("retrieval.use_gpu is set but FAISS sees no GPU (is faiss-gpu installed, and "
                           "retrieval.num_gpus > 0 so the index actor gets one?)")


def to_gpu(index):
    """``index`` copied onto every GPU FAISS sees."""
    import faiss

    require_gpu()
    return faiss.index_cpu_to_all_gpus(index)


def merge_topk(scores: list[np.ndarray], keys: list[np.ndarray], ids: list[np.ndarray], k: int,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-shard hits of the same queries -> each query's best ``k``, exactly.

    ``scores`` [n, k_s], ``keys`` [n, k_s] and ``ids`` [n, k_s] (object) per shard; padding
    has key ``PAD_KEY``. Order: score descending, then key ascending. ``exclude`` [n] holds
    an id per query to leave out (its positive). Returns [n, k] arrays; rows with fewer hits
    are padded with ``PAD_KEY`` keys, -inf scores and None ids.
    """
    all_scores = np.concatenate(scores, axis=1).astype(np.float32)  # [n, sum k_s]
    all_keys = np.concatenate(keys, axis=1)
    all_ids = np.concatenate(ids, axis=1)
    dropped = all_keys == PAD_KEY
    if exclude is not None:
        dropped |= all_ids == np.asarray(exclude, dtype=object)[:, None]
    all_scores = np.where(dropped, -np.inf, all_scores)
    all_keys = np.where(dropped, PAD_KEY, all_keys)
    order = np.lexsort((all_keys, -all_scores), axis=-1)[:, :k]  # [n, k]
    top_scores = np.take_along_axis(all_scores, order, axis=1)
    top_keys = np.take_along_axis(all_keys, order, axis=1)
    top_ids = np.where(top_keys == PAD_KEY, None, np.take_along_axis(all_ids, order, axis=1))
    return top_scores, top_keys, top_ids
