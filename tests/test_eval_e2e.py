"""End to end: an MMEB-mini, then `ray job submit jobs/evaluate.py` with the tiny embedder
and reranker, one query image planted corrupt; then the comparison report."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import BIN, REPO, submit_job

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

QUERIES, CANDIDATES = 4, 5


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from unime_ray.eval.build_mini import build_mini

    out = tmp_path_factory.mktemp("mmeb_mini")
    tasks = build_mini(out, seed=0, queries_per_task=QUERIES, candidates=CANDIDATES)
    first = json.loads((out / "MNIST.jsonl").read_text().splitlines()[0])
    (out / first["qry_img_path"]).write_bytes(b"not a png")  # a corrupt query image
    return out, tasks


def _reranking_is_honoured(out, tasks_dir, checkpoints):
    """Each query's reranked rank is where the reranker's order puts the gold, and that order
    is the reranker's own on the same items (called here, outside Ray); some picks are not
    the embedder's first."""
    from unime_ray.data.images import DEFAULT_MAX_PIXELS
    from unime_ray.dataplane.stages import row_item
    from unime_ray.eval.rerank_stage import reranked_rank
    from unime_ray.models.inputs import load_item
    from unime_ray.models.reranker import Reranker

    ranked = {r["id"]: r for r in pq.read_table(out / "stages" / "ranked").to_pylist()}
    reranked = pq.read_table(out / "stages" / "reranked").to_pylist()
    assert all(r["rank"] == reranked_rank(r["embedder_rank"], r["order"]) for r in reranked)
    moved = [r for r in reranked if r["order"][0] != 0]
    assert moved and any(r["rank"] != r["embedder_rank"] for r in reranked)
    reranker = Reranker.from_pretrained(checkpoints["reranker"], backend="transformers", top_n=3)
    for row in moved[:3]:
        query = ranked[row["id"]]
        candidates = [load_item("", text, path, str(tasks_dir))
                      for text, path in zip(query["candidate_texts"], query["candidate_image_paths"])]
        assert reranker.rerank(row_item(query, str(tasks_dir), DEFAULT_MAX_PIXELS), candidates).order[:3] == row["order"]


def test_evaluate_job_scores_every_task_and_reranks(ray_head, mini, checkpoints, tmp_path):
    tasks_dir, tasks = mini
    out = tmp_path / "eval"
    done = submit_job(ray_head, [
        "python", "jobs/evaluate.py", "--tasks", str(tasks_dir), "--model", checkpoints["embedder"],
        "--reranker", checkpoints["reranker"], "--output-dir", str(out), "rerank.backend=transformers",
        "rerank.top_n=3", "label=tiny"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == set(tasks) and set(results["meta_tasks"]) == {
        "classification", "vqa", "retrieval", "grounding"}
    for name, task in results["tasks"].items():
        assert task["meta_task"] == tasks[name]
        assert task["n"] == (QUERIES - 1 if name == "MNIST" else QUERIES)  # the corrupt image's query is out
        for metric in ("precision_at_1", "recall_at_5", "recall_at_10", "mrr"):
            assert 0.0 <= task[metric] <= 1.0
        assert task["recall_at_10"] == 1.0 or task["candidates"] > 10
    assert 0.0 <= results["overall"] <= 1.0
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["table"], r["row"]) for r in rejects] == [("MNIST", 0)] and "query" in rejects[0]["reason"]

    reranked = results["reranked"]
    assert set(reranked["tasks"]) == set(tasks) and reranked["top_n"] == 3
    # Constrained listwise (the default) reads a distribution over the labels: no fallback.
    assert reranked["fallbacks"] == 0 and reranked["errors"] == 0
    _reranking_is_honoured(out, tasks_dir, checkpoints)
    rows = pq.read_table(out / "stages" / "reranked").to_pylist()  # the position histograms, counted here
    assert reranked["first_choice_positions"] == [sum(r["order"][0] == i for r in rows) for i in range(3)]
    assert reranked["gold_positions"] == [sum(r["embedder_rank"] == i for r in rows) for i in range(3)]
    assert sum(reranked["first_choice_positions"]) == len(rows) > reranked["first_choice_positions"][0]
    table = (out / "results.md").read_text()
    assert "| tiny | tiny + reranker |" in table and "**overall**" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    import subprocess

    compared = subprocess.run([str(BIN / "python"), "-m", "unime_ray.eval.report", str(out / "results.json"),
                               str(out / "results.json"), "--labels", "a", "b", "--output-dir", str(tmp_path / "cmp")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert "| a | a + reranker | b | b + reranker |" in (tmp_path / "cmp" / "comparison.md").read_text()
