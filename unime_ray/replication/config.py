"""The replication's config (``configs/replicate.yaml``): sizes, seeds, and each step's
overrides of the job configs it runs (each validated by that job's own config class)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel


class MergeArm(StrictModel):
    """An arm made by merging: one embedder per group of datasets, then merged
    (``python -m unime_ray.training.merge``), against joint training on every dataset."""

    groups: dict[str, list[str]] = Field(min_length=2, description="group name -> the datasets its embedder trains on")
    method: Literal["linear", "task_arithmetic"] = Field("linear", description="how the group embedders combine")
    weights: list[float] | None = Field(None, description="one per group; default 1/n each")

    @model_validator(mode="after")
    def _merges(self):
        from unime_ray.training.merge import MergeConfig

        # Checked when the config is read, not after every group has trained.
        MergeConfig(base="base", models=list(self.groups), method=self.method, weights=self.weights)
        return self


class ArmConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="the arm's directory name")
    label: str = Field(description="the arm's name in tables")
    overrides: list[str] = Field(description="train_embedder overrides that make this arm (loss, negatives)")
    records: Literal["mined", "labelled"] = Field(
        "mined", description="mined: round 1's records (E0 retrieves, J judges); labelled: E0 retrieves, the labels "
                             "judge (the method with a perfect judge, to tell the judge's errors from the loss's)")
    table: Literal["paper", "neighbours"] = Field(
        "paper", description="paper: the main table's columns; neighbours: a row of the neighbouring methods' "
                             "table, with its difference from neighbours_baseline")
    merge: MergeArm | None = Field(None, description="train one embedder per group of datasets and merge them")
    select: list[str] = Field([], description="mining select.* overrides: the records are re-selected from the same "
                                              "judged pairs (only the selection stage runs again)")

    @model_validator(mode="after")
    def _select_overrides_only(self):
        if any(not o.startswith("select.") for o in self.select):
            raise ValueError(f"arm {self.name}: select holds select.* overrides only, not {self.select}")
        if self.select and self.records != "mined":
            raise ValueError(f"arm {self.name}: select re-selects round 1's mined records; records must be 'mined'")
        return self


class ReplicateConfig(StrictModel):
    output_dir: str = Field("out/replicate", description="every step's output (kept: a rerun skips finished steps)")
    results: str = Field("benchmarks/results/replication.json", description="the result table, committed")
    chart: str = Field("benchmarks/results/replication.png", description="the chart, committed")
    embedder: str = Field(".cache/checkpoints/embedder", description="random-weight embedder E0 starts from")
    reranker: str = Field(".cache/checkpoints/reranker", description="random-weight reranker J starts from")
    train_easyvqa_images: int = Field(500, ge=1, description="easy-VQA training images (3 queries each)")
    train_digits: int = Field(500, ge=0, description="MNIST training digits (a classification query each)")
    heldout_easyvqa_images: int = Field(200, ge=1, description="held-out easy-VQA images for J's quality")
    heldout_digits: int = Field(200, ge=0, description="held-out MNIST digits for J's quality")
    eval_queries_per_task: int = Field(100, ge=1, description="MMEB-mini queries per task (held-out data)")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds per arm")
    mine: list[str] = Field([], description="mining overrides for every mining run (configs/mine.yaml)")
    round0_embedder: list[str] = Field([], description="E0: train_embedder overrides (from scratch, in-batch)")
    round0_reranker: list[str] = Field([], description="J: train_reranker overrides (from scratch, labelled pairs)")
    arm_common: list[str] = Field([], description="train_embedder overrides every round-1 arm shares")
    arms: list[ArmConfig] = Field(min_length=1, description="round-1 arms, all from E0 with the same steps and batch")
    rerank_arm: str = Field(description="name of the arm whose top 5 the round-1 reranker reranks")
    neighbours_baseline: str = Field("c_soft_label", description="the arm the neighbouring methods' arms compare to")
    round1_reranker: list[str] = Field([], description="round-1 reranker overrides (from J, on the mined records)")
    evaluate: list[str] = Field([], description="evaluation overrides (configs/evaluate.yaml)")

    @model_validator(mode="after")
    def _rerank_arm_is_an_arm(self):
        names = [arm.name for arm in self.arms]
        for field in ("rerank_arm", "neighbours_baseline"):
            if getattr(self, field) not in names:
                raise ValueError(f"{field} {getattr(self, field)!r} is not an arm's name ({names})")
        if next(arm for arm in self.arms if arm.name == self.neighbours_baseline).table != "paper":
            raise ValueError(f"neighbours_baseline {self.neighbours_baseline!r} must be an arm of the paper's table")
        labels = [arm.label for arm in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"arm labels repeat: {labels}")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        return self
