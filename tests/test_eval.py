"""Evaluation math on hand-built score matrices, the MMEB task reader, the distributed
ranking against a plain numpy one, the report."""

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes

from unime_ray.dataplane.io import read_dataset
from unime_ray.dataplane.tensors import tensor_column
from unime_ray.eval.items import unique_items
from unime_ray.eval.metrics import (aggregate, argmax_hits, gold_ranks, gold_ties, mean_reciprocal_rank,
                                    precision_at_1, ranks_from_orders, recall_at_k, task_metrics)
from unime_ray.eval.report import columns, markdown, write_report
from unime_ray.eval.rerank_stage import reranked_rank
from unime_ray.eval.scoring import embedder_order, rank_queries
from unime_ray.eval.summaries import task_summaries
from unime_ray.eval.tasks import candidate_id, plan_tasks, query_rows, read_queries


def test_gold_ranks_count_ties_against_the_gold():
    scores = np.array([
        [0.9, 0.1, 0.2],  # gold best: rank 0
        [0.5, 0.5, 0.1],  # tie with the gold: rank 1, not 0
        [0.1, 0.2, 0.3],  # gold last: rank 2
        [0.4, 0.4, 0.4],  # all alike: no credit
    ])
    ranks = gold_ranks(scores)
    assert ranks.tolist() == [0, 1, 2, 2]
    assert precision_at_1(ranks) == 0.25
    assert recall_at_k(ranks, 2) == 0.5
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 3) / 4)
    assert gold_ranks(np.array([[0.2, 0.9]]), gold=1).tolist() == [0]


def test_mmebs_argmax_rule_differs_exactly_on_the_ties_at_the_top():
    scores = np.array([
        [0.9, 0.1, 0.2],  # gold best: both rules
        [0.5, 0.5, 0.1],  # tie at the top: argmax picks index 0, the gold
        [0.3, 0.5, 0.3],  # a tie, but a rival above: neither
        [0.4, 0.4, 0.4],  # collapsed: argmax says perfect
    ])
    ranks, ties = gold_ranks(scores), gold_ties(scores)
    assert ties.tolist() == [0, 1, 1, 2]
    assert argmax_hits(ranks, ties).tolist() == (np.argmax(scores, axis=1) == 0).tolist() == [True, True, False, True]
    metrics = task_metrics(ranks, (2,), ties)
    assert metrics["precision_at_1"] == 0.25 and metrics["precision_at_1_mmeb"] == 0.75
    assert metrics["tied_at_top"] == 2  # (0.75 - 0.25) x 4 queries: the whole difference
    assert task_metrics(ranks, (2,))["precision_at_1_mmeb"] == 0.25  # an explicit order has no ties


def test_a_repeat_of_the_golds_own_item_is_the_gold_not_a_rival():
    # Candidates: gold, a rival, the gold's item again (same text and image, so the same
    # vector and score), the rival again.
    scores = np.array([[0.7, 0.2, 0.7, 0.2], [0.3, 0.6, 0.3, 0.6]])
    same = np.array([[False, False, True, False]] * 2)
    assert gold_ranks(scores, same_as_gold=same).tolist() == [0, 2]  # the repeated rival counts twice
    assert gold_ties(scores, same_as_gold=same).tolist() == [0, 0]
    assert gold_ranks(scores).tolist() == [1, 3]  # not told: the repeat would count against the gold


def test_orders_and_the_embedders_order():
    assert ranks_from_orders([[2, 0, 1], [0, 1, 2], [1, 2, 0]]).tolist() == [1, 0, 2]
    # Descending score; the gold goes after a candidate it ties with, as gold_ranks counts it.
    assert embedder_order(np.array([0.5, 0.9, 0.5, 0.1])) == [1, 2, 0, 3]
    assert ranks_from_orders([embedder_order(np.array([0.5, 0.9, 0.5, 0.1]))]).tolist() == \
        gold_ranks(np.array([[0.5, 0.9, 0.5, 0.1]])).tolist()


def test_aggregation_weighs_tasks_alike_and_skips_empty_ones():
    tasks = {
        "a": {"meta_task": "classification", **task_metrics(np.array([0, 0, 0, 1]))},  # 0.75
        "b": {"meta_task": "classification", **task_metrics(np.array([1, 1]))},  # 0.0
        "c": {"meta_task": "retrieval", **task_metrics(np.array([0]))},  # 1.0
        "d": {"meta_task": "vqa", **task_metrics(np.array([], dtype=np.int64))},  # no queries left
    }
    assert tasks["d"]["precision_at_1"] is None and tasks["d"]["n"] == 0
    meta, overall = aggregate(tasks)
    assert meta == {"classification": 0.375, "retrieval": 1.0}
    assert overall == pytest.approx((0.75 + 0.0 + 1.0) / 3)


def _write_tasks(root):
    (root / "img").mkdir()
    (root / "img" / "a.png").write_bytes(png_bytes((255, 0, 0), (60, 60)))
    (root / "img" / "b.png").write_bytes(png_bytes((0, 0, 255), (60, 60)))
    labels = ["red", "blue", "green"]
    lines = [
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": "img/a.png",
         "tgt_text": labels, "tgt_img_path": ["", "", ""]},
        "this is not json",
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": "img/b.png",
         "tgt_text": ["blue", "red"], "tgt_img_path": [""]},  # lengths differ
        {"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": "img/b.png",
         "tgt_text": ["blue", "red", "green"], "tgt_img_path": ["", "", ""]},
    ]
    (root / "Colors.jsonl").write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    (root / "MSCOCO_t2i.jsonl").write_text(json.dumps(
        {"qry_text": "Find me an everyday image that matches the given caption: a red square", "qry_img_path": "",
         "tgt_text": ["<|image_1|>\nRepresent the given image."] * 2, "tgt_img_path": ["img/a.png", "img/b.png"]}) + "\n")
    (root / "Unknown.jsonl").write_text(lines[0] if isinstance(lines[0], str) else json.dumps(lines[0]) + "\n")
    (root / "tasks.json").write_text(json.dumps({"tasks": {"Colors": "classification"}}))


def test_reading_mmeb_files(tmp_path, caplog):
    _write_tasks(tmp_path)
    tasks = {t["task"]: t for t in plan_tasks(tmp_path)}
    assert tasks["MSCOCO_t2i"]["meta_task"] == "retrieval"  # MMEB's own name needs no tasks.json
    assert tasks["Colors"]["meta_task"] == "classification"
    assert tasks["Unknown"]["meta_task"] == "other"  # undeclared: evaluated, with a warning
    assert "Unknown has no meta-task: evaluated under 'other'" in caplog.text
    colors = query_rows(tasks["Colors"]).to_pylist()
    assert [q["row"] for q in colors] == [0, 1, 2, 3]
    assert [q["id"] for q in colors] == [f"q:Colors:{i}" for i in range(4)]
    reasons = {q["row"]: q["error"] for q in colors if q["error"]}
    assert reasons[1].startswith("not JSON") and reasons[2] == "2 tgt_text but 1 tgt_img_path" and len(reasons) == 2
    first, last = colors[0], colors[3]
    # The label set is shared by both queries: each label is one item, embedded once.
    assert first["candidate_ids"][0] == candidate_id("red", "") == last["candidate_ids"][1]
    assert first["text"] == "Represent the given image for classification"  # placeholder gone
    assert first["image_path"] == "img/a.png" and first["candidate_image_paths"] == ["", "", ""]
    assert [q["row"] for q in query_rows(tasks["Colors"], max_queries=1).to_pylist()] == [0]
    with pytest.raises(ValueError, match="Nope"):
        plan_tasks(tmp_path, names=["Nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no task to evaluate in .*empty: a task is"):
        plan_tasks(tmp_path / "empty")


def test_a_run_with_no_valid_query_fails_saying_why(tmp_path, local_ray):
    from unime_ray.eval.config import EvalConfig
    from unime_ray.eval.evaluate import run_evaluation

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "Colors.jsonl").write_text("not json\n" + json.dumps({"qry_text": "x", "tgt_text": []}) + "\n")
    config = EvalConfig.model_validate({"output_dir": str(tmp_path / "out"), "tasks": {"path": str(tmp_path / "tasks")},
                                        "embed": {"model": str(tmp_path / "never-loaded")}})
    with pytest.raises(ValueError, match=r"no query to evaluate: the 2 rows of tasks \['Colors'\] are all malformed"):
        run_evaluation(config)


def test_ray_reads_every_task_and_embeds_each_item_once(tmp_path, local_ray):
    _write_tasks(tmp_path)
    tasks = plan_tasks(tmp_path)
    queries = read_queries(tasks)
    expected = [row for task in tasks for row in query_rows(task).to_pylist()]
    assert sorted(queries.take_all(), key=lambda q: q["id"]) == sorted(expected, key=lambda q: q["id"])
    items = unique_items(queries, num_partitions=3).take_all()
    ids = [item["id"] for item in items]
    valid = [q for q in expected if q["error"] is None]
    distinct = {q["id"] for q in valid} | {c for q in valid for c in q["candidate_ids"]}
    assert len(ids) == len(set(ids)) and set(ids) == distinct
    assert len(distinct) < len(valid) + sum(len(q["candidate_ids"]) for q in valid)  # shared labels: not trivial
    red = next(item for item in items if item["id"] == candidate_id("red", ""))
    assert red["text"] == "red" and red["image_path"] is None  # MMEB's "" is no image


def _vector_tasks(root):
    """Two tasks whose items get hand-picked vectors (``VECTORS``, by text)."""
    def line(query, targets):
        return json.dumps({"qry_text": query, "qry_img_path": "", "tgt_text": targets,
                           "tgt_img_path": [""] * len(targets)})

    (root / "Colors.jsonl").write_text("\n".join([
        line("q-red", ["red", "blue", "green", "grey"]),  # gold best: rank 0
        line("q-tie", ["blue", "red", "green", "grey"]),  # red ties with the gold blue: rank 1, argmax says 0
        line("q-far", ["grey", "red", "blue", "green"]),  # ties with two, one above: rank 3
        line("q-broken", ["red", "blue"]),  # its own embedding failed: rejected
        line("q-red", ["broken", "red"]),  # gold failed: rejected
        line("q-far", ["grey", "broken", "unknown"]),  # failed and unknown rank last: 0 (their zero slots would tie)
    ]) + "\n")
    (root / "Shapes.jsonl").write_text("\n".join([
        line("q-far", ["blue", "green", "red"]),  # rank 2
        line("q-tie", ["green", "blue", "red", "grey", "red"]),  # below blue and two reds: rank 3
        line("q-red", ["red", "blue", "red"]),  # the gold's item again is the gold: rank 0, no tie
    ]) + "\n")
    (root / "tasks.json").write_text(json.dumps({"tasks": {"Colors": "classification", "Shapes": "retrieval"}}))


VECTORS = {  # exact in float32, so every summation order gives the same scores
    "q-red": [1.0, 0.0, 0.0], "q-tie": [0.5, 0.5, 0.0], "q-far": [0.0, 0.0, 1.0],
    "red": [1.0, 0.0, 0.0], "blue": [0.0, 1.0, 0.0], "green": [0.0, 0.5, 0.5], "grey": [-1.0, 0.0, 0.0],
}
FAILED = {"q-broken": "image: unreadable", "broken": "embedding failed: boom"}  # "unknown": not embedded at all


def _write_embeddings(items: list[dict], path) -> None:
    kept = [item for item in items if item["text"] != "unknown"]
    matrix = np.array([VECTORS.get(item["text"], [0.0] * 3) for item in kept], np.float32)  # [items, 3]
    valid = np.array([item["text"] in VECTORS for item in kept])
    path.mkdir()
    pq.write_table(pa.table({"id": [item["id"] for item in kept], "embedding": tensor_column(matrix, "float32", valid),
                             "error": [FAILED.get(item["text"]) for item in kept]}), path / "part.parquet")


def _plain_ranks(query_rows_: list[dict]) -> dict[str, tuple[int, int] | str]:
    """Query id -> (the gold's rank, its ties) by a per-pair loop, or the reject reason."""
    found, vectors = {}, {text: np.array(v, np.float32) for text, v in VECTORS.items()}
    for q in query_rows_:
        missing = [(what, text) for what, text in (("query", q["text"]), ("gold candidate", q["candidate_texts"][0]))
                   if text not in vectors]
        if missing:
            what, text = missing[0]
            found[q["id"]] = f"{what}: {FAILED.get(text, 'not embedded')}"
            continue
        scores = np.array([float(vectors[q["text"]] @ vectors[t]) if t in vectors else -np.inf
                           for t in q["candidate_texts"]])
        same = np.array([[c == q["candidate_ids"][0] for c in q["candidate_ids"]]])
        found[q["id"]] = (int(gold_ranks(scores[None], same_as_gold=same)[0]),
                          int(gold_ties(scores[None], same_as_gold=same)[0]))
    return found


def test_distributed_ranking_equals_the_plain_one_ties_included(tmp_path, local_ray):
    import ray.data

    _vector_tasks(tmp_path)
    tasks = plan_tasks(tmp_path)
    queries = read_queries(tasks)
    _write_embeddings(unique_items(queries, num_partitions=3).take_all(), tmp_path / "embeddings")
    ranked = rank_queries(queries, read_dataset(tmp_path / "embeddings"), top_n=2, num_partitions=3).take_all()

    plain = _plain_ranks([row for task in tasks for row in query_rows(task).to_pylist()])
    assert {r["id"]: (r["rank"], r["ties"]) if r["error"] is None else r["error"] for r in ranked} == plain
    # Not trivial: ranks past the first two, a tie the strict rule counts against the gold
    # (argmax would give q-tie's gold rank 0), a repeat of the gold, and both kinds of rejects.
    assert plain["q:Colors:1"] == (1, 1) and plain["q:Colors:2"] == (3, 2) and plain["q:Shapes:0"] == (2, 1)
    assert plain["q:Shapes:2"] == (0, 0)
    assert plain["q:Colors:3"] == "query: image: unreadable"
    assert plain["q:Colors:4"] == "gold candidate: embedding failed: boom"
    by_id = {r["id"]: r for r in ranked}
    assert by_id["q:Colors:5"]["rank"] == 0 and by_id["q:Colors:5"]["candidates"] == 3
    # The reranker gets the embedder's top 2, the gold after the candidate it ties with.
    assert by_id["q:Colors:1"]["candidate_texts"] == ["red", "blue"]
    assert by_id["q:Shapes:1"]["candidate_texts"] == ["blue", "red"]

    kept = [r for r in ranked if r["error"] is None]
    summaries = task_summaries(ray.data.from_items(kept), [1, 2], num_partitions=3)
    for task in ("Colors", "Shapes"):
        ranks, ties = np.array([plain[r["id"]] for r in kept if r["task"] == task]).T
        expected = task_metrics(ranks, [1, 2], ties)
        assert {k: summaries[task][k] for k in expected} == expected
    assert summaries["Colors"]["n"] == 4 and summaries["Shapes"]["candidates"] == 5
    assert summaries["Colors"]["precision_at_1"] == 0.5 and summaries["Colors"]["precision_at_1_mmeb"] == 0.75
    assert summaries["Colors"]["tied_at_top"] == 1


def test_reranked_rank_equals_reordering_the_whole_list():
    for n, top in itertools.product(range(1, 6), range(1, 4)):
        for rank in range(n):
            order = list(range(n))  # the embedder's order, gold at ``rank``
            order[0], order[rank] = order[rank], order[0]
            for head in itertools.permutations(range(min(top, n))):
                new_order = [order[i] for i in head] + order[len(head):]
                assert reranked_rank(rank, list(head)) == ranks_from_orders([new_order])[0]


def test_report_puts_runs_side_by_side(tmp_path):
    def run(label, p, reranked=None):
        tasks = {"Colors": {"meta_task": "classification", "precision_at_1": p, "n": 4,
                            "precision_at_1_mmeb": p + 0.25, "tied_at_top": 1},
                 "MSCOCO_t2i": {"meta_task": "retrieval", "precision_at_1": 1.0, "n": 2,
                                "precision_at_1_mmeb": 1.0, "tied_at_top": 0}}
        meta, overall = aggregate(tasks)
        result = {"label": label, "tasks": tasks, "meta_tasks": meta, "overall": overall}
        if reranked is not None:
            result["reranked"] = run(label, reranked)
        return result

    cols = columns(run("base", 0.25)) + columns(run("trained", 0.5, reranked=0.75))
    assert [label for label, _ in cols] == ["base", "trained", "trained + reranker"]
    table = markdown(cols)
    assert "| task | meta-task | n | base | trained | trained + reranker |" in table
    assert "| Colors | classification | 4 | 25.0 | 50.0 | 75.0 |" in table
    assert "| **overall** | | | 62.5 | 75.0 | 87.5 |" in table
    mmeb = markdown(cols, "precision_at_1_mmeb")
    assert "| Colors | classification | 4 | 50.0 (1 tied) | 75.0 (1 tied) | 100.0 (1 tied) |" in mmeb
    assert "| **overall** | | | 75.0 | 87.5 | 100.0 |" in mmeb
    files = write_report(cols, tmp_path, "comparison")
    assert "by MMEB's rule" in open(files["markdown"]).read()
    assert open(files["chart"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
