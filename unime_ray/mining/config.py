"""The mining job's config (``configs/mine.yaml``); defaults run the embedded demo."""

from __future__ import annotations


from typing import Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel
from unime_ray.data.config import CorpusConfig
from unime_ray.dataplane.config import ActorConfig, EmbedConfig, PrepConfig
from unime_ray.mining.select import Modality, Rule
from unime_ray.retrieval.config import RetrievalConfig
from unime_ray.models.settings import EngineSettings


class JudgeConfig(ActorConfig, PrepConfig, EngineSettings):
    model: str = Field(".cache/checkpoints/judge", description="judge MLLM checkpoint: local dir or hub id")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per judge actor")
    batch_size: int = Field(8, ge=1, description="queries per actor batch (each brings 1 + top_k pairs)")
    max_concurrent_batches: int = Field(
        4, ge=1, description="batches in one engine at once, so its scheduler never waits for the next")
    labels: str | None = Field(
        None, description="a Parquet table (target_id, label): score pairs by label instead of by the model "
                          "(1 for the positive's label, else 0), e.g. to mine a reranker's training data")
    label_grading: Literal["exact", "graded"] = Field(
        "exact", description="labels: exact (1/0), or graded: a labelled candidate sharing words with the "
                             "positive's label (\"a red triangle\" for \"a red circle\") scores label_partial x "
                             "the share of words")
    label_partial: float = Field(
        0.5, ge=0, lt=1, description="labels, graded: the most a label other than the positive's scores")
    label_auc: float | None = Field(
        None, gt=0.5, lt=1, description="labels: add noise, calibrated so that positives outscore negatives "
                                        "with this probability (a judge of known AUC)")
    label_seed: int = Field(0, description="labels with label_auc: the noise's seed (drawn per query)")

    @model_validator(mode="after")
    def _label_options_need_labels(self):
        changed = [name for name in ("label_grading", "label_auc") if name in self.model_fields_set
                   and getattr(self, name) != type(self).model_fields[name].default]
        if changed and not self.labels:
            raise ValueError(f"judge.{changed[0]} applies to a judge read off labels: set judge.labels")
        return self


class SelectConfig(StrictModel):
    rule: Rule = Field(
        "beta", description="false-negative rule on the judge's scores (the rank window: on retrieval ranks; "
                            "the adaptive margin: also on each candidate's similarity to the positive)")
    beta: float = Field(0.01, ge=0, description="beta rule: drop s_c > s_pos - beta")
    margin: float = Field(0.05, ge=0, lt=1, description="relative_margin rule: drop s_c > (1 - margin) * s_pos")
    absolute_margin: float = Field(0.1, ge=0, description="absolute_margin rule: drop s_c > s_pos - absolute_margin")
    min_score: float = Field(0.0, ge=0, le=1, description="score_window rule: drop s_c < min_score")
    max_score: float = Field(0.5, ge=0, le=1, description="score_window rule: drop s_c > max_score")
    range_min: int = Field(5, ge=0, description="rank_window rule: drop the range_min nearest candidates")
    range_max: int | None = Field(None, ge=1, description="rank_window rule: drop retrieval ranks >= range_max")
    adaptive_base: float = Field(
        0.01, ge=0, description="adaptive_margin rule: the margin of a candidate unlike the positive")
    adaptive_scale: float = Field(
        0.2, ge=0, description="adaptive_margin rule: drop s_c > s_pos - (adaptive_base + adaptive_scale * "
                               "max(0, cos(c, p))), cos from the embed stage's vectors")
    modality: Modality = Field(
        "any", description="any; target: only negatives of the positive's modality (text, image, text+image); "
                           "mixed: other_modality_share of the k from other modalities")
    other_modality_share: float = Field(0.2, ge=0, le=1, description="mixed: share of other-modality negatives")
    k: int = Field(10, ge=1, description="hard negatives per query")
    step: int = Field(5, ge=1, description="cyclical sampling step")
    seed: int = Field(0, description="seed of the random fallback (drawn per query id)")

    @model_validator(mode="after")
    def _windows_are_not_empty(self):
        if self.min_score > self.max_score:
            raise ValueError(f"select.min_score ({self.min_score}) is above select.max_score ({self.max_score})")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(f"select.range_max ({self.range_max}) must be above select.range_min ({self.range_min})")
        return self


class MineConfig(StrictModel):
    output_dir: str = Field("out/mine", description="stage outputs, manifest and results go here")
    corpus: CorpusConfig = CorpusConfig()
    embed: EmbedConfig = EmbedConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    judge: JudgeConfig = JudgeConfig()
    select: SelectConfig = SelectConfig()
    max_reject_fraction: float = Field(
        0.05, ge=0, le=1, description="fail the job when more than this share of input rows is rejected")
    write_unime_json: bool = Field(False, description="also write mined.json in UniME-V2's layout")
    reuse_from: str | None = Field(
        None, description="another run's output directory: a new output directory starts from its finished "
                          "stages (linked), so that only what this config changes runs, e.g. select.*")
    shuffle_partitions: int = Field(
        4, ge=1, description="hash partitions of the Ray Data joins and group-bys (cluster: about 2x the CPUs)")
    ray_address: str | None = Field(None, description="ray.init address; None joins the job's cluster or starts one")
