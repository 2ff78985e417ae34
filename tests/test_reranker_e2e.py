"""End to end: `ray job submit jobs/train_reranker.py` with 2 workers on the session's mined
records; the exported model then reranks in both modes on both engines."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import submit_job

from unime_ray.models.formats import read_record
from unime_ray.models.reranker import Reranker, listwise_answer, order_by_scores
from unime_ray.training.records import negative_item, positive_item, query_item

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.vllm]

STEPS, TOP_N = 30, 6


@pytest.fixture(scope="module")
def trained(ray_head, first_run, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_reranker")
    done = submit_job(ray_head, [
        "python", "jobs/train_reranker.py", "--config", "configs/train_reranker.yaml", "--output-dir", str(out),
        f"data.mined={first_run / 'mined.parquet'}", f"model={checkpoints['reranker']}",
        f"optim.max_steps={STEPS}", "checkpoint.every_steps=10"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def test_training_loss_falls(trained):
    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    for name in ("loss", "loss_pair", "loss_list"):
        values = [h[name] for h in history]
        assert all(np.isfinite(values)), name
        assert statistics.mean(values[-10:]) < 0.5 * statistics.mean(values[:10]), (name, values)
    summary = json.loads((trained / "train_summary.json").read_text())
    assert (trained / "model" / "config.json").exists() and summary["model"] == str(trained / "model")
    assert read_record(trained / "model")["prompts"] == "unime-ray"


def _requests(first_run, count=8):
    """Mined queries with their positive among their first negatives (positive at i % TOP_N)."""
    requests, positions = [], []
    for i, record in enumerate(pq.read_table(first_run / "mined.parquet").slice(0, count).to_pylist()):
        root = str(first_run)
        candidates = [negative_item(record, j, root) for j in range(TOP_N - 1)]
        candidates.insert(i % TOP_N, positive_item(record, root))
        requests.append((query_item(record, root), candidates))
        positions.append(i % TOP_N)
    return requests, positions


@pytest.fixture(scope="module")
def engines(trained):
    """The exported reranker on both engines, shared by the modes (an engine loads in ~20 s)."""
    from unime_ray.models.engines.scoring import build_judge

    model = str(trained / "model")
    vllm = build_judge("vllm", model=model, max_model_len=1024, kv_cache_gib=1, max_images_per_prompt=TOP_N + 1,
                       engine_kwargs={"enforce_eager": True, "block_size": 32})
    yield build_judge("transformers", model=model), vllm
    vllm.close()


@pytest.mark.parametrize("mode,listwise", [("listwise", "generate"), ("listwise", "constrained"),
                                           ("pointwise", "constrained")])
def test_the_export_reranks_alike_on_both_engines(engines, first_run, mode, listwise):
    requests, _ = _requests(first_run)
    hf, vl = (Reranker(engine, mode, top_n=TOP_N, listwise=listwise) for engine in engines)
    by_hf, by_vllm = hf.rerank_batch(requests), vl.rerank_batch(requests)
    assert hf.fallbacks == sum(r.fallback for r in by_hf) and vl.fallbacks == sum(r.fallback for r in by_vllm)
    for a, b in zip(by_hf, by_vllm):
        assert sorted(a.order) == list(range(TOP_N)) and a.error is None and b.error is None
        if mode == "listwise" and listwise == "constrained":
            # A distribution over the labels: never malformed, and the engines agree on it.
            assert not a.fallback and not b.fallback and a.answer == listwise_answer(a.order[0])
            assert np.max(np.abs(np.array(a.scores) - np.array(b.scores))) < 1e-5
            assert np.all(np.diff(np.array(b.scores)[a.order]) < 1e-5)  # the same order, up to near-ties
        elif mode == "listwise":
            # The untrained model answers noise; this one has learned the answer's form.
            # (Which number, after 30 tiny steps, is another matter: an answer that names
            # none falls back, and is counted.)
            assert a.answer.startswith("Ans: (") and a.answer.strip() == b.answer.strip(), (a.answer, b.answer)
            assert a.order == b.order and a.fallback == b.fallback
        else:
            assert np.max(np.abs(np.array(a.scores) - np.array(b.scores))) < 1e-3
            assert a.order == order_by_scores(a.scores) and b.order == order_by_scores(b.scores)
            # The orders agree up to near-ties: vLLM's scores in transformers' order descend.
            assert np.all(np.diff(np.array(b.scores)[a.order]) < 2e-3)
