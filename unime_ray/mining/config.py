"""The mining job's config (``configs/mine.yaml``); defaults run the embedded demo."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unime_ray.config import StrictModel
from unime_ray.data.config import CorpusConfig
from unime_ray.dataplane.config import ActorConfig, EmbedConfig, PrepConfig
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


class SelectConfig(StrictModel):
    rule: Literal["beta", "relative_margin"] = Field("beta", description="false-negative rule")
    beta: float = Field(0.01, ge=0, description="beta rule: drop s_c > s_pos - beta")
    margin: float = Field(0.05, ge=0, lt=1, description="relative_margin rule: drop s_c > (1 - margin) * s_pos")
    k: int = Field(10, ge=1, description="hard negatives per query")
    step: int = Field(5, ge=1, description="cyclical sampling step")
    seed: int = Field(0, description="seed of the random fallback (drawn per query id)")


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
    shuffle_partitions: int = Field(
        4, ge=1, description="hash partitions of the Ray Data joins and group-bys (cluster: about 2x the CPUs)")
    ray_address: str | None = Field(None, description="ray.init address; None joins the job's cluster or starts one")
