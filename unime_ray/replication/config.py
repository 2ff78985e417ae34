"""The replication's config (``configs/replicate.yaml``): sizes, seeds, and each step's
overrides of the job configs it runs (each validated by that job's own config class)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel

# What an arm's ``mine`` overrides may change: its records are round 1's mining run re-mined
# from the stage they touch (``reuse_from``), the embedder's stages always reused.
ARM_MINING_SECTIONS = ("select.", "judge.label_", "retrieval.pool_by")


class PretrainedModel(StrictModel):
    """A tiny Qwen2-VL built from random weights, then pretrained generatively."""

    hidden_size: int = Field(description="the language model's width (a multiple of 32)")
    layers: int = Field(ge=1, description="language-model and vision-tower layers")
    seed: int = Field(description="seed of the random initialisation")
    overrides: list[str] = Field([], description="pretrain job overrides (configs/pretrain.yaml)")


class ArmConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="the arm's directory name")
    label: str = Field(description="the arm's name in tables")
    overrides: list[str] = Field(description="train_embedder overrides that make this arm (loss, negatives)")
    judge: Literal["model", "labels"] = Field(
        "model", description="model: the pretrained judge's records (round 1); labels: the same retrieved pairs "
                             "judged by the training corpus' labels, with the arm's judge.label_* options")
    mine: list[str] = Field(
        [], description="mining overrides for this arm's records (select.*, judge.label_*, retrieval.pool_by): "
                        "round 1's run re-mined from the first stage they change")
    table: Literal["paper", "judge_curve", "variants"] = Field(
        "paper", description="paper: the main table; judge_curve: (c) under a judge of known quality, plotted "
                             "against its held-out AUC; variants: (c) with one option changed, against (c)")

    @model_validator(mode="after")
    def _mining_overrides(self):
        wrong = [o for o in self.mine if not o.startswith(ARM_MINING_SECTIONS)]
        if wrong:
            raise ValueError(f"arm {self.name}: mine holds {', '.join(ARM_MINING_SECTIONS)} overrides only, not {wrong}")
        if any(o.startswith("judge.label_") for o in self.mine) and self.judge != "labels":
            raise ValueError(f"arm {self.name}: judge.label_* options need judge: labels")
        return self

    @property
    def judge_overrides(self) -> list[str]:
        """What decides this arm's judge (its held-out quality is measured under them)."""
        return [o for o in self.mine if o.startswith("judge.")]


class RerankRun(StrictModel):
    records: str = Field("round1", description="what the reranker trains on: round1 (round 1's records), or an "
                                               "arm's name (that arm's records)")
    arms: list[str] = Field(min_length=1, description="arms whose top candidates are reranked (every seed)")
    top_n: list[int] = Field([5, 10], min_length=1, description="list lengths reranked")
    modes: list[Literal["listwise", "pointwise"]] = Field(["listwise", "pointwise"], min_length=1)


class RerankPlan(StrictModel):
    training: list[str] = Field([], description="train_reranker overrides: rerankers train from the pretrained "
                                                "judge, one per records source of ``runs``")
    runs: list[RerankRun] = Field(min_length=1, description="which reranker reranks which arms, how")


class ReplicateConfig(StrictModel):
    output_dir: str = Field("out/replicate", description="every step's output (kept: a rerun skips finished steps)")
    results: str = Field("benchmarks/results/replication.json", description="the result table, committed")
    chart: str = Field("benchmarks/results/replication.png", description="the arms' chart, committed")
    curve_chart: str = Field("benchmarks/results/judge_quality_curve.png", description="the judge-quality curve")
    train_easyvqa_images: int = Field(500, ge=1, description="easy-VQA training images (3 queries each)")
    train_digits: int = Field(500, ge=0, description="MNIST training digits (a classification query each)")
    heldout_easyvqa_images: int = Field(200, ge=1, description="held-out easy-VQA images for judges' quality")
    heldout_digits: int = Field(200, ge=0, description="held-out MNIST digits for judges' quality")
    eval_queries_per_task: int = Field(300, ge=1, description="MMEB-mini queries per task (held-out data)")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds per arm")
    bootstrap_resamples: int = Field(2000, ge=100, description="paired bootstrap resamples per interval")
    instructions_easyvqa_images: int = Field(2000, ge=1, description="pretraining: easy-VQA training images")
    instructions_digits: int = Field(2000, ge=0, description="pretraining: MNIST training digits")
    base: PretrainedModel = Field(description="the base MLLM every embedder starts from")
    judge: PretrainedModel = Field(description="the larger pretrained MLLM, used zero-shot as the judge")
    mine: list[str] = Field([], description="mining overrides for every mining run (configs/mine.yaml)")
    retriever: list[str] = Field([], description="E0, the retriever: train_embedder overrides (from the base)")
    arm_common: list[str] = Field([], description="train_embedder overrides every arm shares (from the base)")
    arms: list[ArmConfig] = Field(min_length=1, description="arms, all from the base with the same steps and batch")
    reference: str = Field("a_infonce", description="the arm every difference is taken against (InfoNCE)")
    method: str = Field("c_soft_label", description="UniME-V2's arm: variants are compared with it")
    rerank: RerankPlan
    parts: list[Literal["paper", "judge_curve", "variants", "rerank"]] = Field(
        ["paper", "judge_curve", "variants", "rerank"], min_length=1,
        description="what a run does: the arms of these tables, and the reranking runs whose arms and records "
                    "are among them; a later run with more parts continues it (finished steps are skipped)")
    evaluate: list[str] = Field([], description="evaluation overrides (configs/evaluate.yaml)")

    @model_validator(mode="after")
    def _names(self):
        names = [arm.name for arm in self.arms]
        for field, value in (("reference", self.reference), ("method", self.method),
                             *(("rerank.runs.arms", name) for run in self.rerank.runs for name in run.arms),
                             *(("rerank.runs.records", run.records) for run in self.rerank.runs
                               if run.records != "round1")):
            if value not in names:
                raise ValueError(f"{field} {value!r} is not an arm's name ({names})")
        if "paper" not in self.parts:
            raise ValueError(f"parts {self.parts} must include paper: every other part is compared with its arms")
        for field in ("names", "labels"):
            values = [getattr(arm, field[:-1]) for arm in self.arms]
            if len(set(values)) != len(values):
                raise ValueError(f"arm {field} repeat: {values}")
        return self

    @property
    def active_arms(self) -> list[ArmConfig]:
        return [arm for arm in self.arms if arm.table in self.parts]

    @property
    def active_reranking(self) -> list[RerankRun]:
        names = {arm.name for arm in self.active_arms} | {"round1"}
        return [run for run in self.rerank.runs if "rerank" in self.parts and run.records in names
                and set(run.arms) <= names]


def check_plan(cfg: ReplicateConfig, repo) -> None:
    """Every override list against its job's config, before the first step: a typo fails at
    once, not after an hour of pretraining. An embedder override naming an input format
    other than the base's (the tiny checkpoints' own) is refused: the base was pretrained
    to read items that way."""
    from unime_ray.config import load_config
    from unime_ray.eval.config import EvalConfig
    from unime_ray.mining.config import MineConfig
    from unime_ray.models.formats import DEFAULT_INPUT_FORMAT
    from unime_ray.training.config import PretrainConfig, TrainEmbedderConfig, TrainRerankerConfig

    def embedder(overrides: list[str], what: str) -> None:
        chosen = load_config(TrainEmbedderConfig, repo / "configs/train_embedder.yaml", overrides).format
        if chosen not in (None, DEFAULT_INPUT_FORMAT.name):
            raise ValueError(f"{what}: format={chosen} does not match the base's input format "
                             f"{DEFAULT_INPUT_FORMAT.name!r}, which it was pretrained with")

    for model in (cfg.base, cfg.judge):
        load_config(PretrainConfig, repo / "configs/pretrain.yaml", model.overrides)
    embedder(cfg.retriever, "retriever")
    for arm in cfg.arms:
        embedder([*cfg.arm_common, *arm.overrides], f"arm {arm.name}")
        load_config(MineConfig, repo / "configs/mine.yaml", [*cfg.mine, *arm.mine, "judge.labels=labels.parquet"])
    load_config(TrainRerankerConfig, repo / "configs/train_reranker.yaml", cfg.rerank.training)
    for run in cfg.rerank.runs:
        for mode in run.modes:
            for top_n in run.top_n:
                load_config(EvalConfig, repo / "configs/evaluate.yaml",
                            [*cfg.evaluate, f"rerank.mode={mode}", f"rerank.top_n={top_n}"])
