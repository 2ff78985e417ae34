"""Global retrieval with real FAISS inside real Ray actors: index kinds, sharding, exact merge."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unime_ray.dataplane.tensors import tensor_column
from unime_ray.retrieval.config import RetrievalConfig
from unime_ray.retrieval.index import PAD_KEY, merge_topk
from unime_ray.retrieval.shards import (IndexShard, anchor_similarities, fetch_size, index_shards, search_batch,
                                        search_dataset, shard_files, start_shards)


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_targets(directory, matrix: np.ndarray, files: int, failed: set[int] = frozenset()) -> list[str]:
    """Targets t0..t{n-1} as ``files`` embedding files (the embed stage's layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"t{i}" for i in range(len(matrix))]
    valid = np.array([i not in failed for i in range(len(matrix))])
    table = pa.table({"id": ids, "embedding": tensor_column(matrix, valid=valid),
                      "error": pa.array([("embedding failed: x" if i in failed else None) for i in range(len(ids))],
                                        pa.string())})
    bounds = np.linspace(0, len(ids), files + 1).astype(int)
    for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(table.slice(start, stop - start), directory / f"part-{number:03d}.parquet")
    return ids


def _search(directory, queries, positives, num_shards, top_k, **config):
    import ray

    cfg = RetrievalConfig(num_shards=num_shards, top_k=top_k, **config)
    shards = start_shards(cfg)
    ray.get([shard.build.remote(files) for shard, files in zip(shards, shard_files(directory, num_shards))])
    batch = pa.table({"id": [f"q{i}" for i in range(len(queries))], "positive_id": positives,
                      "embedding": tensor_column(queries)})
    out = search_batch(batch, shards, top_k)
    for shard in shards:
        ray.kill(shard)
    return out["candidate_ids"].to_pylist(), out["candidate_sims"].to_pylist()


def brute_force(targets, queries, positives, top_k, unindexed=()):
    """Score descending, then target number ascending; the positive and ``unindexed`` left out."""
    results = []
    for q, positive in enumerate(positives):
        scores = targets @ queries[q]
        order = [i for i in np.lexsort((np.arange(len(targets)), -scores))
                 if f"t{i}" != positive and i not in unindexed][:top_k]
        results.append(([f"t{i}" for i in order], scores[order].tolist()))
    return results


def test_merge_orders_by_score_then_key_and_drops_padding_and_positives():
    scores = [np.array([[0.9, 0.5]], np.float32), np.array([[0.9, 0.7]], np.float32)]
    keys = [np.array([[7, 1]]), np.array([[3, PAD_KEY]])]
    ids = [np.array([["a", "b"]], object), np.array([["c", None]], object)]
    top_scores, top_keys, top_ids = merge_topk(scores, keys, ids, k=3)
    assert top_ids.tolist() == [["c", "a", "b"]]  # the tie at 0.9 goes to the lower key
    assert top_keys.tolist() == [[3, 7, 1]] and top_scores[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    _, _, without = merge_topk(scores, keys, ids, k=3, exclude=np.array(["c"], object))
    assert without.tolist() == [["a", "b", None]]


def test_three_flat_shards_return_exactly_one_flat_index(tmp_path, local_ray):
    rng = np.random.default_rng(0)
    # Small integers over a power of two: every dot product is exact, and duplicated rows
    # make ties, at the top and at the k-th place.
    grid = rng.integers(-2, 3, size=(60, 8)).astype(np.float32) / 4
    targets = np.concatenate([grid, grid[:20], grid[:10], _normalised(rng, 30, 8)])  # 120 rows
    queries = np.concatenate([grid[:12], rng.integers(-2, 3, size=(8, 8)).astype(np.float32) / 4])
    positives = [f"t{i}" for i in rng.integers(0, len(targets), size=len(queries))]
    _write_targets(tmp_path / "emb", targets, files=7, failed={5, 64})
    one = _search(tmp_path / "emb", queries, positives, 1, top_k=10)
    three = _search(tmp_path / "emb", queries, positives, 3, top_k=10)
    assert one == three  # ids and scores, ==, ties included
    expected = brute_force(targets, queries, positives, 10, unindexed={5, 64})  # failed rows are not indexed
    assert [ids for ids, _ in expected] == one[0]
    # numpy sums the random rows' products in another order than FAISS: last-bit differences.
    assert np.allclose(np.array([s for _, s in expected]), np.array(one[1]), rtol=0, atol=1e-6)
    # Not trivial: ties straddle the 10th place, and every shard contributes hits.
    boundary_ties = sum(np.sum(np.isclose(targets @ q, sims[9])) > 1 for q, sims in zip(queries, one[1]))
    assert boundary_ties >= 3
    files = shard_files(tmp_path / "emb", 3)
    shard_of = {}
    for shard, share in enumerate(files):
        for _, path in share:
            shard_of.update({i: shard for i in pq.read_table(path, columns=["id"])["id"].to_pylist()})
    assert {shard_of[i] for ids in one[0] for i in ids} == {0, 1, 2}
    assert not any(p in ids for p, ids in zip(positives, one[0]))


@pytest.mark.parametrize("kind,floor", [("ivf", 0.8), ("ivfpq", 0.5), ("hnsw", 0.8)])
def test_approximate_indexes_find_most_exact_neighbours(tmp_path, local_ray, kind, floor):
    rng = np.random.default_rng(2)
    targets, queries = _normalised(rng, 3000, 32), _normalised(rng, 20, 32)
    _write_targets(tmp_path / "emb", targets, files=3)
    positives = ["none"] * 20
    exact, _ = _search(tmp_path / "emb", queries, positives, 1, top_k=10)
    # train_size below a shard's share: quantizers train on the first file, the rest is streamed in.
    approx, _ = _search(tmp_path / "emb", queries, positives, 2, top_k=10, index=kind, nlist=16, nprobe=8, pq_m=8,
                        train_size=1000)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= floor, recall


def test_a_shard_keeps_the_lowest_keys_of_a_tie_group_larger_than_k(tmp_path):
    # 30 copies of one vector after 5 others: the top 5 are all tied, and the shard must
    # return the 5 lowest keys however FAISS picks among them.
    rng = np.random.default_rng(6)
    same = _normalised(rng, 1, 8)
    targets = np.concatenate([-same * 0.5, _normalised(rng, 4, 8) * 0.1, np.repeat(same, 30, axis=0)])
    _write_targets(tmp_path / "emb", targets, files=2)
    shard = IndexShard(RetrievalConfig().model_dump())
    shard.build(shard_files(tmp_path / "emb", 1)[0][::-1])  # file order given does not matter
    scores, keys, ids = shard.search(same, 5)
    assert ids.tolist() == [[f"t{i}" for i in range(5, 10)]]
    assert np.all(scores == scores[0, 0]) and np.all(np.diff(keys[0]) > 0)


def test_fetching_past_k_stops_at_padding_and_grows_on_a_tie():
    scores = np.array([[0.9, 0.5, 0.5]], np.float32)  # fetched 3 for k=2: the tie may go on
    assert fetch_size(scores, np.array([[4, 2, 7]]), want=2) == 6
    assert fetch_size(scores, np.array([[4, 2, -1]]), want=2) is None  # nothing more to find
    assert fetch_size(np.array([[0.9, 0.5, 0.4]], np.float32), np.array([[4, 2, 7]]), want=2) is None


def test_an_ivf_shard_pads_rows_its_probed_lists_cannot_fill(tmp_path):
    rng = np.random.default_rng(9)
    _write_targets(tmp_path / "emb", _normalised(rng, 400, 8), files=2)
    shard = IndexShard(RetrievalConfig(index="ivf", nlist=8, nprobe=1).model_dump())
    shard.build(shard_files(tmp_path / "emb", 1)[0])
    scores, keys, ids = shard.search(_normalised(rng, 3, 8), 100)  # one list of ~50 probed
    padded = keys == PAD_KEY
    assert padded[:, -1].all() and (padded == (ids == None)).all()  # noqa: E711 (elementwise)
    assert all(len(set(row[~pad])) == (~pad).sum() for row, pad in zip(ids, padded))


def test_searching_a_dataset_in_parallel_tasks_leaves_each_positive_out(tmp_path, local_ray):
    import ray
    import ray.data

    rng = np.random.default_rng(7)
    targets = _normalised(rng, 40, 8)
    _write_targets(tmp_path / "emb", targets, files=4)
    # Each query is its positive target plus a little noise: the positive is its best hit.
    queries = targets[:12] + 0.01 * _normalised(rng, 12, 8)
    positives = [f"t{i}" for i in range(12)]
    cfg = RetrievalConfig(num_shards=2, top_k=5, query_chunk_size=4)  # 3 query blocks
    shards = start_shards(cfg)
    ray.get([shard.build.remote(files) for shard, files in zip(shards, shard_files(tmp_path / "emb", 2))])
    ds = ray.data.from_arrow(pa.table({"id": [f"q{i}" for i in range(12)], "positive_id": positives,
                                       "embedding": tensor_column(queries)}))
    out = pa.concat_tables(ray.get(search_dataset(ds, shards, cfg).to_arrow_refs())).sort_by("id")
    unfiltered = search_batch(pa.table({"id": ["q0"], "embedding": tensor_column(queries[:1])}), shards, 5)
    for shard in shards:
        ray.kill(shard)
    got = dict(zip(out["id"].to_pylist(), out["candidate_ids"].to_pylist()))
    expected = brute_force(targets, queries, positives, 5)
    assert [got[f"q{i}"] for i in range(12)] == [ids for ids, _ in expected]
    assert "embedding" not in out.column_names and out["candidate_sims"].type == pa.list_(pa.float32())
    # Not trivial: without a positive column the positive comes first.
    assert unfiltered["candidate_ids"].to_pylist()[0][0] == "t0"


def test_a_saved_shard_loads_as_one_faiss_index(tmp_path, local_ray):
    import faiss
    import ray

    rng = np.random.default_rng(8)
    targets, queries = _normalised(rng, 50, 8), _normalised(rng, 3, 8)
    _write_targets(tmp_path / "emb", targets, files=3, failed={7})
    [shard] = start_shards(RetrievalConfig(), num_shards=1)
    ray.get(shard.build.remote(shard_files(tmp_path / "emb", 1)[0]))
    dim = ray.get(shard.save.remote(str(tmp_path / "index.faiss"), str(tmp_path / "ids.parquet")))
    _, _, searched = ray.get(shard.search.remote(queries, 4))
    ray.kill(shard)
    index, ids = faiss.read_index(str(tmp_path / "index.faiss")), pq.read_table(tmp_path / "ids.parquet")["id"]
    assert dim == 8 and index.ntotal == len(ids) == 49 and "t7" not in ids.to_pylist()
    _, positions = index.search(queries, 4)
    assert [[ids[int(p)].as_py() for p in row] for row in positions] == searched.tolist()


def test_small_corpus_returns_what_exists(tmp_path, local_ray):
    rng = np.random.default_rng(3)
    _write_targets(tmp_path / "emb", _normalised(rng, 4, 8), files=1)
    ids, _ = _search(tmp_path / "emb", _normalised(rng, 2, 8), ["t0", "t1"], 3, top_k=50)
    assert [len(r) for r in ids] == [3, 3] and "t0" not in ids[0]


def test_gpu_without_a_gpu_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(4)
    _write_targets(tmp_path / "emb", _normalised(rng, 4, 8), files=1)
    shard = IndexShard(RetrievalConfig(use_gpu=True).model_dump())
    with pytest.raises(RuntimeError, match="sees no GPU"):
        shard.build(shard_files(tmp_path / "emb", 1)[0])


def test_ivfpq_refuses_a_sub_quantizer_count_that_does_not_divide_the_dimension(tmp_path):
    rng = np.random.default_rng(5)
    _write_targets(tmp_path / "emb", _normalised(rng, 100, 12), files=1)
    shard = IndexShard(RetrievalConfig(index="ivfpq", pq_m=5).model_dump())
    with pytest.raises(ValueError, match="does not divide"):
        shard.build(shard_files(tmp_path / "emb", 1)[0])


def test_similarities_to_an_anchor_read_across_shards_equal_numpy(tmp_path, local_ray):
    rng = np.random.default_rng(11)
    targets = _normalised(rng, 30, 8)
    _write_targets(tmp_path / "emb", targets, files=6, failed={4})
    anchors = pa.array(["t0", "t17", "t4", "t29"])  # t4 failed to embed: not indexed
    items = pa.array([["t6", "t12", "t2"], ["t0", "nope"], ["t3"], []], pa.list_(pa.string()))
    per_shards = {}
    for num_shards in (1, 3, 7):  # 7 shards over 6 files: one holds nothing
        config = RetrievalConfig(num_shards=num_shards, num_cpus=0.25)
        with index_shards(config, tmp_path / "emb") as (shards, indexed):
            per_shards[num_shards] = anchor_similarities(anchors, items, shards).to_pylist()
        assert indexed == 29
    cos = lambda a, b: float(targets[a] @ targets[b])  # noqa: E731
    expected = [[cos(0, 6), cos(0, 12), cos(0, 2)], [cos(17, 0), None], [None], []]
    for got in per_shards.values():
        assert [[None if v is None else pytest.approx(v, abs=1e-6) for v in row] for row in expected] == got
    # Not trivial: over 3 shards (5 targets a file, files dealt round-robin), t0, t6 and t12 are in three.
    shard_of = {f"t{i}": n % 3 for n in range(6) for i in range(5 * n, 5 * n + 5)}
    assert len({shard_of[t] for t in ("t0", "t6", "t12")}) == 3


def test_queries_without_a_pool_are_rejected_with_their_dataset():
    from unime_ray.mining.pipeline import unpooled_rejects

    batch = pa.table({"id": ["q1", "q2", "q3"], "row": [0, 1, 2], "dataset": ["a", "b", None]})
    rejects = unpooled_rejects(batch, ["a"]).to_pylist()
    assert [(r["id"], r["row"], r["table"]) for r in rejects] == [("q2", 1, "queries"), ("q3", 2, "queries")]
    assert "no target of dataset 'b'" in rejects[0]["reason"] and "has no dataset" in rejects[1]["reason"]


def test_a_pooled_shard_indexes_and_returns_only_its_datasets_targets(tmp_path):
    rng = np.random.default_rng(4)
    targets = _normalised(rng, 12, 8)
    datasets = ["a", "b", None] * 4
    (tmp_path / "emb").mkdir()
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(12)], "dataset": datasets,
                             "embedding": tensor_column(targets), "error": pa.nulls(12, pa.string())}),
                   tmp_path / "emb" / "part.parquet")
    shard = IndexShard(RetrievalConfig().model_dump())
    assert shard.build(shard_files(tmp_path / "emb", 1)[0], pool="a") == 4
    _, _, ids = shard.search(targets[:3], 10)
    assert ids.shape == (3, 4) and {i for row in ids for i in row} == {"t0", "t3", "t6", "t9"}
    whole = IndexShard(RetrievalConfig().model_dump())
    assert whole.build(shard_files(tmp_path / "emb", 1)[0]) == 12  # not trivial: unpooled, all of them
