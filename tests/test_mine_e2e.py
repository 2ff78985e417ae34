"""End to end: `ray job submit jobs/mine.py` on a real local Ray cluster, real vLLM and FAISS.

A small easy-VQA slice with bad rows planted; a second run is stopped mid-judge and
resubmitted, and must write the same records as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from unime_ray.data.corpus import Corpus
from unime_ray.data.easyvqa import build_easyvqa_corpus

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.vllm]

BIN = Path(sys.executable).parent
K, TOP_K, BETA = 6, 20, 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on loopback in its own temp dir; stopped afterwards."""
    temp = tempfile.mkdtemp(prefix="ur", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Token auth on, with this cluster's own token: nothing depends on ~/.ray.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    yield {"address": f"http://127.0.0.1:{dash}", "env": env}
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def planted_corpus(tmp_path_factory):
    """12 easy-VQA images (36 queries) plus bad rows of every kind."""
    corpus = build_easyvqa_corpus(num_images=12, seed=7)
    queries = corpus.queries.to_pylist() + [
        {"id": "bad:missing", "instruction": "Find a caption for the given image.", "image_path": "no/such.png",
         "positive_id": "ans:yes", "dataset": "planted"},
        {"id": "bad:empty", "text": "", "positive_id": "ans:yes", "dataset": "planted"},
        {"id": "bad:unknown", "text": "what?", "positive_id": "ans:nope", "dataset": "planted"},
        {"id": "bad:corrupt_pos", "text": "what?", "positive_id": "img:corrupt", "dataset": "planted"},
    ]
    targets = corpus.targets.to_pylist() + [
        {"id": "img:corrupt", "image": b"\x89PNG\r\n\x1a\n truncated", "dataset": "planted"},
        {"id": "img:escape", "image_path": "../../../etc/hostname", "dataset": "planted"},
    ]
    out = tmp_path_factory.mktemp("corpus")
    Corpus(pa.Table.from_pylist(queries, schema=corpus.queries.schema),
           pa.Table.from_pylist(targets, schema=corpus.targets.schema)).save(out)
    return {"path": str(out), "image_root": corpus.image_root, "good_queries": corpus.queries.num_rows}


def _entrypoint(planted, checkpoints, output_dir):
    return ["--", "python", "jobs/mine.py", "--config", "configs/mine.yaml", "--output-dir", str(output_dir),
            "corpus.source=parquet", f"corpus.path={planted['path']}", f"corpus.image_root={planted['image_root']}",
            f"embed.model={checkpoints['embedder']}", f"judge.model={checkpoints['judge']}",
            f"retrieval.top_k={TOP_K}", f"select.k={K}", f"select.beta={BETA}", "judge.max_model_len=1024"]


def _submit(head, planted, checkpoints, output_dir, *extra):
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir", str(REPO), *extra]
    cmd += _entrypoint(planted, checkpoints, output_dir)
    return subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def first_run(ray_head, planted_corpus, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("mine1")
    done = _submit(ray_head, planted_corpus, checkpoints, out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


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
    assert len(rejects) == 6


def test_a_job_stopped_midway_resumes_to_the_same_records(ray_head, planted_corpus, checkpoints, first_run, tmp_path):
    out = tmp_path / "mine2"
    started = _submit(ray_head, planted_corpus, checkpoints, out, "--no-wait", "--submission-id", "mine-killed")
    assert started.returncode == 0, started.stderr
    manifest = out / "manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline:  # stop once retrieval is recorded, i.e. while judging
        if manifest.exists() and "retrieve" in json.loads(manifest.read_text())["stages"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the job never reached the judge stage")
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_head["address"], "mine-killed"],
                          env=ray_head["env"], capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr
    stages = json.loads(manifest.read_text())["stages"]
    assert "select" not in stages and not (out / "mined.parquet").exists()

    resumed = _submit(ray_head, planted_corpus, checkpoints, out)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "stage corpus: already complete, skipped" in resumed.stdout + resumed.stderr
    assert "stage embed: already complete, skipped" in resumed.stdout + resumed.stderr
    assert pq.read_table(out / "mined.parquet").equals(pq.read_table(first_run / "mined.parquet"))
