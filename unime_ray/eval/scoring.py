"""Each query ranks its own candidate list by the embedder: a join, a group-by, numpy.

1. ``slot_rows`` explodes every valid query into (query, slot, item id) rows: slot -1 is
   the query's own item, slot 0 its gold, then the other candidates in the file's order.
2. ``rank_queries`` joins those rows with the embeddings on the item id (a hash join in
   Ray Data) and groups them back by query.
3. ``rank_query`` then has one query's vectors in hand: it scores the candidates, ranks
   the gold (``metrics.gold_ranks``: a tie counts against the gold) and keeps the
   embedder's top ``top_n`` for the reranker. ``ties`` counts the rivals that score the
   gold's score exactly, for MMEB's argmax rule beside ours; a repeat of the gold's own
   item (the same content id) is the gold, not a rival.

Memory follows one query (up to 1,000 candidates in MMEB), never the benchmark. A query
whose own vector or gold's vector is missing is rejected with why; a candidate that
failed ranks below every other one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.dataplane.tensors import vectors
from unime_ray.eval.metrics import gold_ranks, gold_ties

SLOT_SCHEMA = pa.schema([
    pa.field("query_id", pa.string()), pa.field("slot", pa.int32()), pa.field("id", pa.string()),
    # The query's own row (slot -1) carries where it comes from; candidate rows leave these null.
    pa.field("task", pa.string()), pa.field("meta_task", pa.string()), pa.field("row", pa.int64()),
    pa.field("text", pa.string()), pa.field("image_path", pa.string()),
])
RANKED_SCHEMA = pa.schema([
    pa.field("task", pa.string()), pa.field("meta_task", pa.string()), pa.field("row", pa.int64()),
    pa.field("id", pa.string()),
    pa.field("rank", pa.int64()),  # the gold's 0-based rank; null when rejected
    pa.field("ties", pa.int64()),  # rivals scoring exactly the gold's score
    pa.field("candidates", pa.int64()), pa.field("error", pa.string()),
    # The reranker's input: the query's item and its top candidates in the embedder's order.
    pa.field("instruction", pa.string()), pa.field("text", pa.string()), pa.field("image", pa.binary()),
    pa.field("image_path", pa.string()), pa.field("candidate_texts", pa.list_(pa.string())),
    pa.field("candidate_image_paths", pa.list_(pa.string())),
])


def embedder_order(scores: np.ndarray) -> list[int]:
    """Candidates by descending score; the gold (index 0) after any candidate it ties with,
    as ``gold_ranks`` counts it."""
    is_gold = np.zeros(len(scores), dtype=bool)
    is_gold[0] = True
    return np.lexsort((is_gold, -scores)).tolist()


def candidate_scores(query: np.ndarray, candidates: np.ndarray, embedded: np.ndarray) -> np.ndarray:
    """Cosine scores [C] of a query [d] against candidates [C, d] (unit vectors); -inf
    where a candidate was not embedded (its slots hold no vector)."""
    scores = np.full(len(candidates), -np.inf)
    scores[embedded] = candidates[embedded].astype(np.float32) @ query.astype(np.float32)
    return scores


def slot_rows(batch: pa.Table) -> pa.Table:
    """Valid query rows (``tasks.QUERY_SCHEMA``) -> ``SLOT_SCHEMA`` rows: each query's own
    row, then one row per candidate."""
    batch = batch.filter(pc.is_null(batch["error"]))
    lengths = pc.list_value_length(batch["candidate_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    parents = np.repeat(np.arange(batch.num_rows), lengths)  # each candidate's query
    n = int(lengths.sum())
    own = pa.Table.from_arrays([batch["id"], pa.array(np.full(batch.num_rows, -1, np.int32)), batch["id"],
                                batch["task"], batch["meta_task"], batch["row"], batch["text"], batch["image_path"]],
                               schema=SLOT_SCHEMA)
    candidates = pa.Table.from_arrays([
        batch["id"].take(pa.array(parents)), pa.array((np.arange(n) - starts[parents]).astype(np.int32)),
        pc.list_flatten(batch["candidate_ids"]), pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
        pa.nulls(n, pa.int64()), pc.list_flatten(batch["candidate_texts"]),
        pc.list_flatten(batch["candidate_image_paths"])], schema=SLOT_SCHEMA)
    return pa.concat_tables([own, candidates])


def rank_query(group: pa.Table, top_n: int) -> pa.Table:
    """One query's joined slot rows (with ``embedding`` and ``error``) -> its
    ``RANKED_SCHEMA`` row."""
    group = group.sort_by("slot")
    # [-1, 0, ..., C-1]: anything else means an item id matched several embeddings.
    if not np.array_equal(group["slot"].to_numpy(), np.arange(-1, group.num_rows - 1)):
        raise ValueError(f"query {group['query_id'][0]}: slots {group['slot'].to_pylist()} after the join")
    query = group.select(["task", "meta_task", "row", "query_id", "text", "image_path"]).slice(0, 1).to_pylist()[0]
    out = {"task": query["task"], "meta_task": query["meta_task"], "row": query["row"], "id": query["query_id"],
           "text": query["text"], "image_path": query["image_path"], "candidates": group.num_rows - 1}
    embedded = group["embedding"].is_valid().to_numpy()
    for what, index in (("query", 0), ("gold candidate", 1)):
        if not embedded[index]:
            reason = group["error"][index].as_py() or "not embedded"
            return pa.Table.from_pylist([{**out, "error": f"{what}: {reason}"}], schema=RANKED_SCHEMA)
    matrix = vectors(group["embedding"])  # [1 + C, d]: the query, then its candidates
    scores = candidate_scores(matrix[0], matrix[1:], embedded[1:])  # [C]
    top = pa.array(np.asarray(embedder_order(scores)[:top_n]) + 1)  # the group's rows of the top candidates
    ids = group["id"].to_pylist()[1:]
    same_as_gold = np.array([[item == ids[0] for item in ids]])  # [1, C]
    return pa.Table.from_pylist([{**out, "rank": int(gold_ranks(scores[None], same_as_gold=same_as_gold)[0]),
                                  "ties": int(gold_ties(scores[None], same_as_gold=same_as_gold)[0]),
                                  "candidate_texts": group["text"].take(top).to_pylist(),
                                  "candidate_image_paths": group["image_path"].take(top).to_pylist()}],
                                schema=RANKED_SCHEMA)


def rank_queries(queries, embeddings, top_n: int, num_partitions: int):
    """``RANKED_SCHEMA`` rows of every valid query: ``queries`` (``tasks.QUERY_SCHEMA``)
    ranked by ``embeddings`` (``id``, ``embedding``, ``error``), both Datasets."""
    pairs = queries.map_batches(slot_rows, batch_format="pyarrow")
    joined = pairs.join(embeddings.select_columns(["id", "embedding", "error"]), "left_outer",
                        num_partitions=num_partitions, on=("id",))
    return joined.groupby("query_id", num_partitions=num_partitions).map_groups(
        rank_query, fn_kwargs={"top_n": top_n}, batch_format="pyarrow")
