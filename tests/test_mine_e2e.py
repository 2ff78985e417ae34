"""End to end: `ray job submit jobs/mine.py` on a real local Ray cluster, real vLLM and FAISS.

A small easy-VQA slice with bad rows planted; a second run is stopped mid-judge and
resubmitted, and must write the same records as the uninterrupted run.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BEFORE_JUDGE, BETA, BIN, K, REPO, TOP_K, submit_job, submit_mining, wait_for_job

from unime_ray.mining.manifest import reuse_stages

SNAPSHOT = REPO / "tests" / "fixtures" / "planted_mined_407b7af.json"


pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.vllm]


def test_mined_records_respect_the_method(first_run, planted_corpus):
    mined = pq.read_table(first_run / "mined.parquet").to_pylist()
    assert len(mined) == planted_corpus["good_queries"]
    assert len({r["query_id"] for r in mined}) == len(mined)
    kept = 0
    for r in mined:
        assert len(r["neg_ids"]) == K and len(r["neg_scores"]) == K
        assert r["positive_id"] not in r["neg_ids"]
        if r["used_fallback"]:
            assert r["neg_scores"] == [1.0] * K
        else:
            kept += 1
            assert all(s <= r["query_pos_score"] - BETA + 1e-12 for s in r["neg_scores"])
    assert kept > 0  # the beta rule was exercised, not only the fallback
    assert sum(r["false_negatives_dropped"] for r in mined) > 0
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["records"] == len(mined)
    assert summary["pairs_judged"] == len(mined) * (1 + TOP_K)
    assert summary["pairs_judged_this_run"] == summary["pairs_judged"] and summary["pairs_restored"] == 0
    assert summary["rows_embed_restored"] == 0
    assert 0 < summary["prefix_cache_hit_rate"] < 1  # each query's pairs share its prompt prefix
    json_records = json.loads((first_run / "mined.json").read_text())
    assert len(json_records) == len(mined) and len(json_records[0]["hard_negatives"]) == K
    # Mined image references resolve under the output directory.
    assert all((first_run / r["query_image"]).is_file() for r in mined if r["query_image"])


def test_bad_rows_are_reported_with_reasons(first_run):
    rejects = {r["id"]: r["reason"] for r in pq.read_table(first_run / "rejects.parquet").to_pylist()}
    assert "not found" in rejects["bad:missing"]
    assert rejects["bad:empty"] == "empty item: no text and no image"
    assert rejects["bad:unknown"] == "unknown positive id 'ans:nope'"
    assert rejects["bad:corrupt_pos"] == "positive target 'img:corrupt' was rejected"
    assert "cannot be decoded" in rejects["img:corrupt"]
    assert "escapes the image root" in rejects["img:escape"]
    assert rejects["bad:thin"].startswith("embedding failed")  # failed after validation: still reported
    assert rejects["img:thin"].startswith("embedding failed")
    assert len(rejects) == 8
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["rows_rejected"] == 8 and summary["rejected_by_reason"]["embedding failed"] == 2


def committed_rows(checkpoint_dir) -> int:
    """Rows in Ray Data's committed checkpoint files (pending ones end in .pending.parquet)."""
    files = [f for f in checkpoint_dir.glob("*.parquet") if not f.name.endswith(".pending.parquet")] \
        if checkpoint_dir.is_dir() else []
    total = 0
    for file in files:
        try:
            total += pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowInvalid):  # renamed or removed meanwhile
            pass
    return total


def kill_engine_processes() -> int:
    """SIGKILL every vLLM EngineCore process (the judge actor's engine); returns how many."""
    killed = 0
    for process in psutil.process_iter(["name", "cmdline"]):
        if "EngineCore" in (process.info["name"] or "") + " ".join(process.info["cmdline"] or []):
            process.kill()
            killed += 1
    return killed


def test_a_stopped_job_resumes_by_row_and_survives_an_engine_death(ray_head, planted_corpus, checkpoints, tmp_path):
    """Stopped once a third of the judge stage is checkpointed, resubmitted, and its vLLM
    engine killed mid-judge: the job still finishes, re-judging at most the rest plus the
    blocks in flight, with the records of an uninterrupted run and no extra rejects."""
    out, queries = tmp_path / "mine2", planted_corpus["good_queries"]
    # Blocks of 4 queries (4 batches of 1), and 448x448 images (256 tokens each), so that
    # judging takes long enough to be stopped midway with several blocks still to go.
    large_images = f"judge.min_pixels={448 * 448}"
    slow = ["judge.batch_size=1", large_images]
    started = submit_mining(ray_head, planted_corpus, checkpoints, out, "--no-wait", "--submission-id", "mine-stopped",
                            overrides=slow)
    assert started.returncode == 0, started.stderr
    checkpoint = out / "stages" / "judge.partial" / "checkpoint"
    deadline = time.time() + 600
    while time.time() < deadline and committed_rows(checkpoint) * 3 < queries:
        time.sleep(0.1)
    assert committed_rows(checkpoint) * 3 >= queries, "the job never checkpointed a third of the judge stage"
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_head["address"], "mine-stopped"],
                          env=ray_head["env"], capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert "judge" not in json.loads((out / "manifest.json").read_text())["stages"]
    restorable = committed_rows(checkpoint)
    assert restorable < queries, "stopped too late: the judge stage had finished"

    resumed = submit_mining(ray_head, planted_corpus, checkpoints, out, "--no-wait", "--submission-id", "mine-resumed",
                            overrides=slow)
    assert resumed.returncode == 0, resumed.stderr
    while time.time() < deadline and committed_rows(checkpoint) <= restorable:  # judging again
        time.sleep(0.1)
    assert committed_rows(checkpoint) < queries, "the resumed run finished before its engine could be killed"
    assert kill_engine_processes() >= 1
    assert wait_for_job(ray_head, "mine-resumed", timeout=600) == "SUCCEEDED"
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", ray_head["address"], "mine-resumed"],
                          env=ray_head["env"], capture_output=True, text=True, timeout=120).stdout
    assert "stage embed: already complete, skipped" in logs and "stage judge: resuming from its checkpoint" in logs
    # vLLM raised EngineDeadError in the waiting requests; the actor exited to be restarted.
    assert "EngineDeadError" in logs and "exiting so that Ray restarts this actor" in logs

    summary = json.loads((out / "summary.json").read_text())
    pairs_per_query, block = 1 + TOP_K, 4 * (1 + TOP_K)
    assert summary["pairs_restored"] >= restorable * pairs_per_query
    # The rest, the block the stop cut short, and the block the engine's death cut short.
    assert summary["pairs_judged_this_run"] <= (queries - restorable) * pairs_per_query + block
    assert summary["pairs_judged_this_run"] + summary["pairs_restored"] == summary["pairs_judged"]
    assert summary["records"] == queries and summary["rows_rejected"] == 8  # only the planted bad rows

    # An uninterrupted run from the same retrieval (stages copied, judge and select redone),
    # in batches of the default size: the scores do not depend on how pairs are batched.
    fresh = tmp_path / "mine3"
    reuse_stages(out, fresh, BEFORE_JUDGE)
    done = submit_mining(ray_head, planted_corpus, checkpoints, fresh, overrides=[large_images])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert json.loads((fresh / "summary.json").read_text())["pairs_restored"] == 0
    resumed_records = pq.read_table(out / "mined.parquet").sort_by("query_id")
    uninterrupted = pq.read_table(fresh / "mined.parquet").sort_by("query_id")
    assert resumed_records.column_names == uninterrupted.column_names
    for name in resumed_records.column_names:
        a, b = resumed_records[name].to_pylist(), uninterrupted[name].to_pylist()
        if name in ("query_pos_score", "neg_scores"):  # batches were cut differently: float32 sums
            assert np.allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=0, atol=1e-6), name
        else:
            assert a == b, name


def test_same_records_as_the_single_process_pipeline(first_run):
    """The distributed data plane writes the records the driver-bound pipeline of git
    407b7af wrote on the same corpus, settings and checkpoints (snapshot taken then)."""
    snapshot = json.loads(SNAPSHOT.read_text())
    mined = {r["query_id"]: r for r in pq.read_table(first_run / "mined.parquet").to_pylist()}
    assert sorted(mined) == [r["query_id"] for r in snapshot["records"]]
    for old in snapshot["records"]:
        new = mined[old["query_id"]]
        for key in ("dataset", "positive_id", "neg_ids", "used_fallback", "false_negatives_dropped", "query_image",
                    "pos_image", "neg_images"):
            assert new[key] == old[key], (old["query_id"], key)
        assert abs(new["query_pos_score"] - old["query_pos_score"]) <= 1e-6
        assert np.allclose(new["neg_scores"], old["neg_scores"], rtol=0, atol=1e-6)
    # Not trivially equal: the snapshot holds real selections, fallbacks and dropped negatives.
    assert {r["used_fallback"] for r in snapshot["records"]} == {True, False}
    assert len({tuple(r["neg_ids"]) for r in snapshot["records"]}) > len(snapshot["records"]) // 2
    def reasons(rows):  # the image root is where this checkout's venv is, not part of the record
        return {(r["table"], r["id"], re.sub(r" under /\S+", " under <image root>", r["reason"])) for r in rows}

    assert reasons(pq.read_table(first_run / "rejects.parquet").to_pylist()) == reasons(snapshot["rejects"])
    summary = json.loads((first_run / "summary.json").read_text())
    assert {k: summary[k] for k in snapshot["summary"]} == snapshot["summary"]


def test_too_many_rejected_rows_fail_the_job_with_the_count_and_reasons(ray_head, planted_corpus, checkpoints,
                                                                       tmp_path):
    from conftest import png_bytes

    from unime_ray.data.corpus import Corpus
    from unime_ray.data.easyvqa import build_easyvqa_corpus

    corpus = build_easyvqa_corpus(num_images=12, seed=7)
    rows = corpus.queries.num_rows + corpus.targets.num_rows
    targets = corpus.targets.to_pylist()
    images = [t for t in targets if t["image"] or t["image_path"]]
    corrupt = round(0.1 * rows)
    for target in images[:corrupt]:
        target["image"] = png_bytes()[:40]  # a truncated PNG
    path = tmp_path / "corpus"
    Corpus(corpus.queries, pa.Table.from_pylist(targets, schema=corpus.targets.schema)).save(path)
    done = submit_job(ray_head, ["python", "jobs/mine.py", "--config", "configs/mine.yaml",
                                 "--output-dir", str(tmp_path / "out"), "corpus.source=parquet", f"corpus.path={path}",
                                 f"corpus.image_root={corpus.image_root}", f"embed.model={checkpoints['embedder']}",
                                 f"judge.model={checkpoints['judge']}"])
    logs = done.stdout + done.stderr
    assert done.returncode != 0
    message = re.search(r"after the corpus stage, (\d+) of (\d+) rows are rejected \(([\d.]+)%\), "
                        r"over max_reject_fraction=0.05; top reasons: ([^.]*)", logs)
    assert message, logs[-4000:]
    rejected, total = int(message[1]), int(message[2])
    assert total == rows and rejected >= corrupt and float(message[3]) >= 9.5
    assert f"cannot be decoded: {corrupt}" in message[4]
    # What was finished stays recorded: a rerun resumes after the corpus stage.
    assert "corpus" in json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]


def test_the_adaptive_margin_reselects_the_judged_pairs_by_similarity_to_the_positive(
        ray_head, planted_corpus, checkpoints, first_run, tmp_path):
    """Only the selection reruns (the session run's stages reused); each candidate's
    similarity to its positive comes from the embed stage's vectors, here checked in numpy."""
    from unime_ray.dataplane.tensors import vectors

    out, base, scale = tmp_path / "adaptive", 0.01, 0.5
    done = submit_mining(ray_head, planted_corpus, checkpoints, out, overrides=[
        "select.rule=adaptive_margin", f"select.adaptive_base={base}", f"select.adaptive_scale={scale}",
        f"reuse_from={first_run}"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert {name for name in json.loads((out / "manifest.json").read_text())["stages"]
            if not (out / "stages" / name).is_symlink()} == {"select"}
    targets = pq.read_table(first_run / "stages/embed/targets", columns=["id", "embedding"])
    embedding = dict(zip(targets["id"].to_pylist(), vectors(targets["embedding"])))
    judged = {r["id"]: r for r in pq.read_table(first_run / "stages/judge/scores", columns=[
        "id", "target_ids", "positive_score", "candidate_scores", "error"]).to_pylist()}
    records = pq.read_table(out / "mined.parquet").to_pylist()
    expected_drops = 0
    for record in records:
        row = judged[record["query_id"]]
        positive = embedding[row["target_ids"][0]]
        margin = {t: base + scale * max(0.0, float(embedding[t] @ positive)) for t in row["target_ids"][1:]}
        scored = [(t, s) for t, s in zip(row["target_ids"][1:], row["candidate_scores"]) if s is not None]
        threshold = {t: row["positive_score"] - margin[t] for t, _ in scored}
        assert all(abs(s - threshold[t]) > 1e-5 for t, s in scored)  # float32 cosines cannot tip one over
        dropped = {t for t, s in scored if s > threshold[t]}
        expected_drops += len(dropped)
        assert record["false_negatives_dropped"] == len(dropped), record["query_id"]
        if not record["used_fallback"]:
            assert not dropped & set(record["neg_ids"]), record["query_id"]
    beta_run = json.loads((first_run / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == beta_run["records"] and summary["false_negatives_dropped"] == expected_drops
    # Not trivial: the adaptive margin drops more than the beta rule on the same scores.
    assert expected_drops > beta_run["false_negatives_dropped"]


def test_candidate_pools_by_dataset_retrieve_exactly_within_each_dataset(
        ray_head, planted_corpus, checkpoints, first_run, tmp_path):
    """retrieval.pool_by=dataset: only retrieval onwards reruns (labels judge the pairs: every
    target its own label), and each query's candidates are numpy's exact top k among its
    own dataset's targets."""
    from unime_ray.dataplane.tensors import vectors

    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"target_id": ["none"], "label": ["none"]}), labels)
    out = tmp_path / "pooled"
    done = submit_mining(ray_head, planted_corpus, checkpoints, out, overrides=[
        "retrieval.pool_by=dataset", f"judge.labels={labels}", f"reuse_from={first_run}"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert {name for name in json.loads((out / "manifest.json").read_text())["stages"]
            if not (out / "stages" / name).is_symlink()} == {"retrieve", "pairs", "judge", "select"}
    targets = pq.read_table(first_run / "stages/embed/targets", columns=["id", "dataset", "embedding", "error"])
    targets = targets.filter(pa.compute.is_null(targets["error"]))
    ids, datasets, matrix = np.array(targets["id"].to_pylist()), np.array(targets["dataset"].to_pylist()), \
        vectors(targets["embedding"])
    queries = {r["id"]: r for r in pq.read_table(first_run / "stages/embed/queries").to_pylist()}
    searched = pq.read_table(out / "stages/retrieve/candidates").to_pylist()
    for row in searched:
        query = queries[row["id"]]
        pool = (datasets == query["dataset"]) & (ids != query["positive_id"])
        expected = np.sort(matrix[pool] @ np.asarray(query["embedding"], np.float32))[::-1][:TOP_K]
        assert set(datasets[np.isin(ids, row["candidate_ids"])]) == {query["dataset"]}, row["id"]
        np.testing.assert_allclose(row["candidate_sims"], expected, atol=1e-5)
    # Not trivial: the global pool mixes datasets for some query.
    global_rows = pq.read_table(first_run / "stages/retrieve/candidates").to_pylist()
    assert len(searched) == len(global_rows)  # every query's dataset has targets here
    of = dict(zip(ids, datasets))
    assert any({of[c] for c in row["candidate_ids"]} != {queries[row["id"]]["dataset"]} for row in global_rows)
    assert json.loads((out / "summary.json").read_text())["records"] == len(searched)
