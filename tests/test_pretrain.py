"""Generative pretraining: instruction turns from training splits, and `ray job submit
jobs/pretrain.py` training every weight of a tiny model on them."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import submit_job

from unime_ray.data.images import ImageError
from unime_ray.data.instructions import INSTRUCTIONS_FILE, MATCH, build_instructions, instruction_turns
from unime_ray.data.mnist import HELD_OUT_EVERY
from unime_ray.training.pretrain_loop import build_turn_batch, turn_sequence


def _corpus():
    queries = [{"id": "vqa:1", "dataset": "easyvqa_vqa", "instruction": "Q:", "text": "what shape?",
                "image_path": "a.png", "positive_id": "ans:circle"},
               {"id": "t2i:1", "dataset": "easyvqa_t2i", "instruction": "Find:", "text": "a red circle",
                "image_path": None, "positive_id": "img:1"}]
    targets = {"ans:circle": {"id": "ans:circle", "dataset": "easyvqa_vqa", "text": "circle", "image_path": None},
               "ans:yes": {"id": "ans:yes", "dataset": "easyvqa_vqa", "text": "yes", "image_path": None},
               "img:1": {"id": "img:1", "dataset": "easyvqa_t2i", "text": None, "image_path": "a.png"},
               "img:2": {"id": "img:2", "dataset": "easyvqa_t2i", "text": None, "image_path": "b.png"},
               "img:3": {"id": "img:3", "dataset": "easyvqa_t2i", "text": None, "image_path": "c.png"}}
    return queries, targets


def test_instruction_turns_by_hand():
    queries, targets = _corpus()
    labels = {"img:1": "a red circle", "img:2": "a red circle", "img:3": "a blue square"}  # img:2 is no "No"
    for seed in range(5):
        turns = instruction_turns(queries, targets, labels, np.random.default_rng(seed))
        assert [(t["kind"], t["answer"]) for t in turns] == [
            ("vqa", "circle"), ("match", "Yes"), ("match", "No"), ("match", "Yes"), ("match", "No")]
        assert [t["query_id"] for t in turns] == [f"turn:{n}" for n in range(5)]
        assert turns[0]["parts"] == [{"text": None, "image_path": "a.png"}, {"text": "what shape?", "image_path": None}]
        assert turns[2]["parts"][-2]["text"] == "yes"  # the other answer of the task
        assert turns[4]["parts"][-2]["image_path"] == "c.png"  # never the same-caption image
        assert turns[3]["parts"] == [{"text": "Query:", "image_path": None},
                                     {"text": "Find: a red circle", "image_path": None},
                                     {"text": "Candidate:", "image_path": None},
                                     {"text": None, "image_path": "a.png"}, {"text": MATCH, "image_path": None}]


def test_a_turn_becomes_one_sequence_and_a_bad_image_skips_only_its_turn(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 0, 0)).save(tmp_path / "a.png")
    good = {"query_id": "turn:0", "parts": [{"text": None, "image_path": "a.png"}, {"text": "Describe the image.",
                                                                                     "image_path": None}],
            "answer": "a red circle"}
    sequence = turn_sequence(good, str(tmp_path))
    assert sequence.answer == "a red circle" and len(sequence.images) == 1
    assert sequence.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Describe the image."}]
    bad = {**good, "query_id": "turn:1", "parts": [{"text": None, "image_path": "missing.png"}]}
    with pytest.raises(ImageError):
        turn_sequence(bad, str(tmp_path))
    batch = build_turn_batch([good, bad], str(tmp_path))
    assert batch.size == 1 and batch.skipped[0][0] == "turn:1"


@pytest.mark.e2e
@pytest.mark.ray
def test_pretraining_learns_the_answers_and_exports_a_model(ray_head, checkpoints, tmp_path):
    from transformers import AutoModelForImageTextToText

    turns = build_instructions(tmp_path / "instructions", easyvqa_images=12, digits=8)
    table = pq.read_table(turns)
    assert set(table["kind"].to_pylist()) == {"caption", "vqa", "digit", "match"}
    digits = [p["image_path"] for parts in table["parts"].to_pylist() for p in parts
              if p["image_path"] and "mnist" in p["image_path"]]
    assert digits and all(int(path.rsplit("/", 1)[1][:6]) % HELD_OUT_EVERY for path in digits)  # training digits
    out = tmp_path / "pretrain"
    done = submit_job(ray_head, ["python", "jobs/pretrain.py", "--config", "configs/pretrain.yaml", "--output-dir",
                                 str(out), f"model={checkpoints['judge']}", f"data.mined={turns}",
                                 "per_worker_batch_size=8", "optim.lr=0.003", "optim.warmup_steps=3",
                                 "optim.max_steps=30", "checkpoint.every_steps=30"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and statistics.mean(losses[-5:]) < 0.6 * statistics.mean(losses[:5]), losses
    summary = json.loads((out / "train_summary.json").read_text())
    trained = AutoModelForImageTextToText.from_pretrained(summary["model"])
    base = AutoModelForImageTextToText.from_pretrained(checkpoints["judge"])
    head, base_head = trained.get_output_embeddings().weight, base.get_output_embeddings().weight
    assert not torch.allclose(head, base_head)  # every weight trained, the head too
    assert (tmp_path / "instructions" / INSTRUCTIONS_FILE) == turns
