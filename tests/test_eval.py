"""Evaluation math on hand-built score matrices, the MMEB task reader, the report."""

import json

import numpy as np
import pytest
from conftest import png_bytes

from unime_ray.eval.evaluate import embedder_order, score_task
from unime_ray.eval.metrics import (aggregate, gold_ranks, mean_reciprocal_rank, precision_at_1, ranks_from_orders,
                                    recall_at_k, task_metrics)
from unime_ray.eval.report import columns, markdown, write_report
from unime_ray.eval.tasks import candidate_id, read_tasks


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


def test_reading_mmeb_files(tmp_path):
    _write_tasks(tmp_path)
    evalset = read_tasks(tmp_path)
    by_name = {t.name: t for t in evalset.tasks}
    assert set(by_name) == {"Colors", "MSCOCO_t2i"}  # MMEB's own name needs no tasks.json
    assert by_name["MSCOCO_t2i"].meta_task == "retrieval" and by_name["Colors"].meta_task == "classification"
    colors = by_name["Colors"]
    assert colors.rows == [0, 3] and len(colors.candidate_ids) == 2
    # The label set is shared by both queries: each label is one item, embedded once.
    assert colors.candidate_ids[0][0] == candidate_id("red", "") == colors.candidate_ids[1][1]
    items = {row["id"]: row for row in evalset.items.to_pylist()}
    assert items[colors.query_ids[0]]["text"] == "Represent the given image for classification"  # placeholder gone
    assert items[colors.query_ids[0]]["image_path"] == "img/a.png"
    reasons = {(r["table"], r["row"]): r["reason"] for r in evalset.rejects}
    assert reasons[("Colors", 1)].startswith("not JSON")
    assert reasons[("Colors", 2)] == "2 tgt_text but 1 tgt_img_path"
    assert "unknown meta-task" in reasons[("Unknown", None)]
    assert read_tasks(tmp_path, max_queries=1).tasks[0].rows == [0]
    with pytest.raises(ValueError, match="Nope"):
        read_tasks(tmp_path, names=["Nope"])


def test_a_failed_query_is_rejected_and_a_failed_candidate_ranks_last(tmp_path):
    _write_tasks(tmp_path)
    colors = {t.name: t for t in read_tasks(tmp_path).tasks}["Colors"]
    q0, q1 = colors.query_ids
    red, blue, green = colors.candidate_ids[0]
    vectors = {q1: np.array([1.0, 0.0]), blue: np.array([0.0, 1.0]), red: np.array([1.0, 0.0])}
    kept, scores, rejects = score_task(colors, vectors, {q0: "image: unreadable", green: "boom"})
    assert kept == [1] and rejects == [{"table": "Colors", "id": q0, "row": 0, "reason": "query: image: unreadable"}]
    assert scores[0].tolist() == [0.0, 1.0, -np.inf]  # candidates of q1: blue (gold), red, green


def test_report_puts_runs_side_by_side(tmp_path):
    def run(label, p, reranked=None):
        tasks = {"Colors": {"meta_task": "classification", "precision_at_1": p, "n": 4},
                 "MSCOCO_t2i": {"meta_task": "retrieval", "precision_at_1": 1.0, "n": 2}}
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
    files = write_report(cols, tmp_path, "comparison")
    assert open(files["chart"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
