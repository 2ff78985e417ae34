"""The replication's parts: the labelled corpus, the label judge, judge quality, the tables,
the config, and full fine-tuning's checkpoints (``make replicate`` itself is a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from unime_ray.config import load_config
from unime_ray.data.labelled_corpus import LABEL_SCHEMA, LABELS_FILE, build_labelled_corpus
from unime_ray.data.mnist import HELD_OUT_EVERY
from unime_ray.mining.config import SelectConfig
from unime_ray.mining.label_judge import LabelJudgeUDF, graded_scores, label_scores, noise_sigma, noisy_scores
from unime_ray.mining.select_stage import select_records
from unime_ray.replication.config import ArmConfig, ReplicateConfig, check_plan
from unime_ray.replication.judge_quality import auc, judge_quality, records_profile, soft_label_mass
from unime_ray.replication.tables import arm_summary, delta_table, markdown_table, mean_std

REPO = Path(__file__).resolve().parents[1]


def test_auc_counts_ties_half():
    assert auc([0.9, 0.8], [0.1, 0.8]) == pytest.approx(3.5 / 4)
    assert auc([1.0], [0.0, 0.5]) == 1.0 and auc([0.0], [1.0]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5  # a constant judge is at chance
    assert auc([], [0.3]) is None


def test_judge_quality_by_hand():
    rows = [
        # gold 0.9; a duplicate at 0.95 (dropped: 0.95 > 0.9 - 0.1) and one at 0.2 (kept, missed); a negative at 0.85
        # (dropped: a real negative lost), one at 0.1.
        {"positive_score": 0.9, "candidate_scores": [0.95, 0.2, 0.85, 0.1],
         "candidate_positive": [True, True, False, False]},
        {"positive_score": 0.4, "candidate_scores": [None, 0.3], "candidate_positive": [True, False]},  # a failed pair
        {"positive_score": None, "candidate_scores": [0.9], "candidate_positive": [True]},  # a failed query
    ]
    quality = judge_quality(rows, beta=0.1)
    # positives 0.9, 0.95, 0.2, 0.4; negatives 0.85, 0.1, 0.3: 9 of 12 pairs ordered right.
    assert quality["auc"] == pytest.approx(9 / 12)
    assert quality["positive_pairs"] == 4 and quality["negative_pairs"] == 3 and quality["pairs"] == 7
    assert quality["false_negatives_labelled"] == 2
    assert quality["false_negative_recall"] == 0.5  # 0.95 dropped, 0.2 missed
    assert quality["dropped"] == 2 and quality["dropped_precision"] == 0.5  # 0.95 and 0.85; 0.3 is not > 0.4 - 0.1
    # Right at 0.5: 0.9, 0.95, 0.1, 0.3 and not 0.2, 0.85, 0.4.
    assert quality["accuracy_at_0.5"] == pytest.approx(4 / 7)


def test_records_profile_by_hand():
    # scores 0.9 vs 0.88 at tau 0.02: weights e^0 and e^-1 -> 1 / (1 + e^-1) on the positive.
    assert soft_label_mass(0.9, [0.88], 0.02) == pytest.approx(1 / (1 + np.exp(-1)))
    records = [{"positive_id": "ans:yes", "neg_ids": ["ans:no", "cap:a red circle", "img:3"], "query_pos_score": 0.9,
                "neg_scores": [0.88, 0.1, 0.1]},
               {"positive_id": "img:1", "neg_ids": ["img:2", "img:3", "ans:no"], "query_pos_score": 1.0,
                "neg_scores": [0.0, 0.0, 0.0]}]
    profile = records_profile(records, num_negatives=2, temperature=0.02)
    assert profile["negatives_of_the_positives_kind"] == pytest.approx((1 / 2 + 2 / 2) / 2)  # the first 2 only
    assert profile["soft_label_positive_mass_median"] == pytest.approx((1 / (1 + np.exp(-1)) + 1.0) / 2, abs=1e-6)
    assert "false_negatives_by_label" not in profile
    labelled = records_profile(records, num_negatives=2, temperature=0.02, labels={"img:1": "1", "img:2": "1"})
    assert labelled["false_negatives_by_label"] == pytest.approx((0 + 1 / 2) / 2)  # img:2 shares img:1's label


def test_label_scores():
    assert label_scores(["a red circle", "a blue circle", "a red circle"], "a red circle") == [1.0, 0.0, 1.0]


def _judge_row(query_id: str, target_ids: list[str]) -> dict:
    n = len(target_ids)
    return {"id": query_id, "dataset": "easyvqa_t2i", "instruction": "Find me an everyday image that matches the given "
            "caption:", "text": "a red circle", "image": None, "image_path": None, "row": 0,
            "target_ids": target_ids, "target_instructions": ["Represent the given image."] * n,
            "target_texts": [None] * n, "target_images": [None] * n,
            "target_image_paths": [f"images/{t}.png" for t in target_ids]}


def test_the_label_judge_feeds_selection_only_known_negatives(tmp_path):
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist([{"target_id": "img:1", "label": "a red circle"},
                                         {"target_id": "img:2", "label": "a red circle"},
                                         {"target_id": "img:3", "label": "a blue square"}], schema=LABEL_SCHEMA), labels)
    # img:1 is the positive; img:2 shares its caption; img:3 and an unlabelled target are negatives.
    batch = pa.Table.from_pylist([_judge_row("t2i:1", ["img:1", "img:2", "img:3", "img:9"])])
    judged = LabelJudgeUDF(str(labels))(batch)
    row = judged.to_pylist()[0]
    assert row["positive_score"] == 1.0 and row["candidate_scores"] == [1.0, 0.0, 0.0]
    assert row["error"] is None and row["prompt_tokens"] == 0
    [record] = select_records(judged, SelectConfig(k=5, step=1), str(tmp_path)).to_pylist()
    assert record["error"] is None
    assert set(record["neg_ids"]) == {"img:3", "img:9"} and record["false_negatives_dropped"] == 1


def test_graded_scores_by_hand():
    labels = ["a red circle", "a red triangle", "a blue triangle", "a blue circle", "ans:red"]
    # colour or shape shared: 0.5 x 1/2; nothing shared: 0; an unlabelled target (its id) never scores partial.
    assert graded_scores(labels, "a red circle", [True, True, True, True, False], 0.5) == [1.0, 0.25, 0.0, 0.25, 0.0]


def test_noise_calibrated_to_an_auc():
    assert noise_sigma(0.76) == pytest.approx(np.sqrt(2) * 4.0 / 0.706302, rel=1e-5)  # Phi^-1(0.76) = 0.7063
    rng = np.random.default_rng(0)
    for target in (0.7, 0.8, 0.9, 0.95):
        positives = noisy_scores(np.ones(20000), noise_sigma(target), rng)
        negatives = noisy_scores(np.zeros(20000), noise_sigma(target), rng)
        assert auc(positives.tolist(), negatives.tolist()) == pytest.approx(target, abs=0.01)
        assert ((0 <= positives) & (positives <= 1)).all()
    with pytest.raises(ValueError, match="between 0.5 and 1"):
        noise_sigma(1.0)


def test_label_judge_variants_are_seeded_per_query(tmp_path):
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist([{"target_id": "img:1", "label": "a red circle"},
                                         {"target_id": "img:2", "label": "a red triangle"}], schema=LABEL_SCHEMA),
                   labels)
    batch = pa.Table.from_pylist([_judge_row("t2i:1", ["img:1", "img:2", "img:9"]),
                                  _judge_row("t2i:2", ["img:1", "img:2", "img:9"])])
    graded = LabelJudgeUDF(str(labels), grading="graded")(batch).to_pylist()
    assert graded[0]["positive_score"] == 1.0 and graded[0]["candidate_scores"] == [0.25, 0.0]
    noisy = LabelJudgeUDF(str(labels), auc=0.8, seed=3)(batch).to_pylist()
    again = LabelJudgeUDF(str(labels), auc=0.8, seed=3)(batch.slice(1)).to_pylist()
    assert noisy[1]["candidate_scores"] == again[0]["candidate_scores"]  # per query, whatever the batch
    assert noisy[0]["candidate_scores"] != noisy[1]["candidate_scores"]  # not one draw for every query
    assert noisy[0]["positive_score"] != 1.0


def test_labelled_corpus_splits_and_labels(tmp_path):
    train = build_labelled_corpus(tmp_path / "train", "train", easyvqa_images=6, digits=5)
    test = build_labelled_corpus(tmp_path / "test", "test", easyvqa_images=6, digits=5)
    for root in (train, test):
        queries = pq.read_table(root / "queries.parquet").to_pylist()
        targets = {t["id"]: t for t in pq.read_table(root / "targets.parquet").to_pylist()}
        assert len(queries) == 6 * 3 + 5
        assert all(q["positive_id"] in targets for q in queries)
        for row in [*queries, *targets.values()]:
            if row["image_path"]:
                assert (root / row["image_path"]).is_file()
        labels = pq.read_table(root / LABELS_FILE).to_pylist()
        captions = {q["positive_id"]: q["text"] for q in queries if q["dataset"] == "easyvqa_t2i"}
        assert {r["target_id"]: r["label"] for r in labels} == captions and len(captions) == 6
    def digit_ids(root):
        return {int(q["id"].split(":")[1]) for q in pq.read_table(root / "queries.parquet").to_pylist()
                if q["dataset"] == "mnist_cls"}

    assert all(i % HELD_OUT_EVERY for i in digit_ids(train)) and all(i % HELD_OUT_EVERY == 0 for i in digit_ids(test))


def _result(p1: dict[str, float], metas: dict[str, float], overall: float, mmeb: float) -> dict:
    return {"tasks": {name: {"precision_at_1": v, "tied_at_top": 0} for name, v in p1.items()},
            "meta_tasks": metas, "overall": overall, "mmeb": {"overall": mmeb}}


def test_arm_summary_means_and_stds_in_points():
    results = [_result({"A": 0.2, "B": 0.4}, {"m": 0.3}, 0.3, 0.3), _result({"A": 0.4, "B": 0.4}, {"m": 0.4}, 0.4, 0.5)]
    summary = arm_summary(results)
    assert summary["tasks"]["A"]["mean"] == pytest.approx(30)
    assert summary["tasks"]["A"]["std"] == pytest.approx(14.142, abs=1e-3)
    assert summary["tasks"]["B"]["std"] == 0 and summary["overall_mmeb"]["mean"] == pytest.approx(40)
    assert mean_std([0.5])["std"] == 0.0
    table = markdown_table({"x": summary, "y": summary}, "meta_tasks")
    assert table.splitlines()[0] == "| meta-tasks | x | y |" and "| **overall** | 35.0 ± 7.1 | 35.0 ± 7.1 |" in table
    with pytest.raises(ValueError, match="different tasks"):
        arm_summary([results[0], _result({"A": 0.1}, {"m": 0.1}, 0.1, 0.1)])
    other = arm_summary([_result({"A": 0.5, "B": 0.5}, {"m": 0.5}, 0.5, 0.5)])
    assert delta_table({"c": summary, "new": other}, "c").splitlines() == [
        "| arm | m | overall | overall, difference |", "|---|---|---|---|",
        "| c | 35.0 ± 7.1 | 35.0 ± 7.1 | (reference) |", "| new | 50.0 ± 0.0 | 50.0 ± 0.0 | +15.0 |"]


def test_the_replication_config_and_every_override_it_passes_are_valid():
    from unime_ray.training.config import PretrainConfig, TrainEmbedderConfig, TrainRerankerConfig

    cfg = load_config(ReplicateConfig, REPO / "configs/replicate.yaml")
    check_plan(cfg, REPO)  # every override list against its job's config
    for model in (cfg.base, cfg.judge):
        assert load_config(PretrainConfig, REPO / "configs/pretrain.yaml", model.overrides).finetune == "full"
    assert cfg.judge.hidden_size * cfg.judge.layers >= 3 * cfg.base.hidden_size * cfg.base.layers  # the larger model
    e0 = load_config(TrainEmbedderConfig, REPO / "configs/train_embedder.yaml", cfg.retriever)
    assert e0.finetune == "full" and e0.loss == "info_nce" and not e0.info_nce_hard_negatives
    assert load_config(TrainRerankerConfig, REPO / "configs/train_reranker.yaml", cfg.rerank.training).finetune == "full"
    arms = {arm.name: load_config(TrainEmbedderConfig, REPO / "configs/train_embedder.yaml",
                                  [*cfg.arm_common, *arm.overrides]) for arm in cfg.arms}
    assert [(a.loss, a.info_nce_hard_negatives, a.soft_label_log) for a in list(arms.values())[:4]] == [
        ("info_nce", False, "exact"), ("info_nce", True, "exact"), ("soft_label", False, "public"),
        ("soft_label", False, "public")]
    assert [arm.judge for arm in cfg.arms][:4] == ["model", "model", "model", "labels"]
    # The curve's arms and the variants: (c) with its judge, its loss form or its pool changed.
    reference = arms[cfg.method].model_dump()
    for arm in cfg.arms[4:]:
        changed = {k for k, v in arms[arm.name].model_dump().items() if v != reference[k]}
        assert (arm.table == "judge_curve" and arm.judge == "labels" and arm.mine and not changed) or (
            arm.table == "variants" and len(changed) + len(arm.mine) == 1), (arm.name, changed)
    # Same steps, batch and learning rate in every arm: only the loss and its negatives differ.
    assert len({(a.optim.max_steps, a.per_worker_batch_size, a.optim.lr, a.temperature) for a in arms.values()}) == 1
    with pytest.raises(ValueError, match="overrides only"):
        ArmConfig(name="x", label="x", overrides=[], mine=["judge.batch_size=2"])
    with pytest.raises(ValueError, match="need judge: labels"):
        ArmConfig(name="x", label="x", overrides=[], mine=["judge.label_auc=0.8"])
    # A run of some parts: the paper's arms and the reranking of them, not the variant's records.
    part = load_config(ReplicateConfig, REPO / "configs/replicate.yaml", ["parts=[paper, rerank]"])
    assert {arm.table for arm in part.active_arms} == {"paper"} and len(part.active_arms) == 4
    assert [run.records for run in part.active_reranking] == ["round1"]
    with pytest.raises(ValueError, match="must include paper"):
        load_config(ReplicateConfig, REPO / "configs/replicate.yaml", ["parts=[variants]"])
    with pytest.raises(ValueError, match="does not match the base's input format"):
        check_plan(load_config(ReplicateConfig, REPO / "configs/replicate.yaml",
                               ["retriever=[format=unime-v2-qwen2vl]"]), REPO)
    with pytest.raises(ValueError, match="optim.nope"):
        check_plan(load_config(ReplicateConfig, REPO / "configs/replicate.yaml", ["arm_common=[optim.nope=1]"]), REPO)
    with pytest.raises(ValueError, match="rerank.runs.arms 'nope'"):
        load_config(ReplicateConfig, REPO / "configs/replicate.yaml", ["rerank.runs=[{arms: [nope]}]"])


def test_full_finetuning_checkpoints_resume_and_export(checkpoints, tmp_path):
    """``finetune=full``: every weight is saved, restored into a fresh model, and exported
    as a plain model directory with those weights."""
    from unime_ray.models.loading import load_model
    from unime_ray.training.checkpointing import export_checkpoint, load_state, save_state, warmup_linear

    model = load_model(checkpoints["embedder"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = warmup_linear(optimizer, 1, 10)
    save_state(tmp_path, model, optimizer, scheduler, step=7)
    assert not (tmp_path / "adapter").exists()

    fresh = load_model(checkpoints["embedder"])
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    assert load_state(tmp_path, fresh, fresh_optimizer, warmup_linear(fresh_optimizer, 1, 10)) == 7
    exported = load_model(str(export_checkpoint(checkpoints["embedder"], tmp_path, tmp_path / "model")))
    base = load_model(checkpoints["embedder"])
    for (name, trained), restored, out, original in zip(model.state_dict().items(), fresh.state_dict().values(),
                                                        exported.state_dict().values(), base.state_dict().values()):
        assert torch.equal(trained, restored) and torch.equal(trained, out), name
        if trained.is_floating_point():
            assert not torch.equal(trained, original), name  # the test would pass on the base weights otherwise
    assert json.loads((tmp_path / "model" / "processor_config.json").read_text())  # loadable wherever a checkpoint is
