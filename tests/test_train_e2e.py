"""End to end: `ray job submit jobs/train_embedder.py` with 2 workers on the mined records
of the session's mining run, a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

import numpy as np
import psutil
import pytest
from conftest import K, submit_job, wait_for_job

from unime_ray.models.embedder import Embedder
from unime_ray.models.formats import read_record
from unime_ray.models.inputs import Item

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def _train_entrypoint(first_run, checkpoints, out, *overrides):
    return ["python", "jobs/train_embedder.py", "--config", "configs/train_embedder.yaml", "--output-dir", str(out),
            f"data.mined={first_run / 'mined.parquet'}", f"model={checkpoints['embedder']}",
            f"num_negatives={K}", "per_worker_batch_size=8", "optim.lr=0.001", "optim.warmup_steps=3", *overrides]


def _history(out):
    """The last record of every step in metrics.jsonl (a resumed run repeats steps)."""
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record
    return [steps[s] for s in sorted(steps)]


def _train_worker_pids():
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]


def test_training_survives_a_killed_worker_the_loss_falls_and_the_export_embeds(ray_head, first_run, checkpoints,
                                                                                 tmp_path):
    """One run does both (each job costs minutes of start-up on 2 cores): a worker killed
    after the first checkpoint, the run resumed from it, and what it learnt."""
    out = tmp_path / "train_fault"
    started = submit_job(ray_head, _train_entrypoint(first_run, checkpoints, out, "optim.max_steps=40",
                                                     "checkpoint.every_steps=5"),
                         "--no-wait", "--submission-id", "train-fault")
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until a checkpoint (step 5) is behind us
        if (out / "metrics.jsonl").exists() and _history(out)[-1]["step"] >= 12:
            break
        time.sleep(0.5)
    else:
        pytest.fail("training never reached step 12")
    pids = _train_worker_pids()
    assert len(pids) == 2, pids
    os.kill(pids[1], signal.SIGKILL)
    assert wait_for_job(ray_head, "train-fault") == "SUCCEEDED"
    history = _history(out)
    assert [h["step"] for h in history] == list(range(1, 41))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["metrics"]["step"] == 40
    assert summary["metrics"]["resumed_from_step"] >= 10  # restarted from a checkpoint, not from scratch
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) > 40  # the steps after the checkpoint ran twice

    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses))
    # 36 records, 2 workers x 8 per step: many epochs over the same data, so it must fit them.
    assert statistics.mean(losses[-10:]) < 0.8 * statistics.mean(losses[:10]), losses
    assert history[0]["candidates_encoded"] < 8 * (1 + K)  # duplicates were encoded once
    trained = Embedder.from_pretrained(summary["model"])
    base = Embedder.from_pretrained(checkpoints["embedder"])
    items = [Item("Find a caption for the given image.", "a red circle"), Item("", "a blue triangle")]
    after, before = trained.embed(items), base.embed(items)
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(after, before, atol=1e-4)  # the merged LoRA changed the model
    # The export records the formats it was trained with: it reloads as it was trained.
    assert read_record(summary["model"]) == read_record(checkpoints["embedder"])
    assert trained.format == base.format
