"""The mining job's config (``configs/mine.yaml``); defaults run the embedded demo."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel
from unime_ray.data.images import DEFAULT_MAX_PIXELS
from unime_ray.models.settings import EngineSettings


class CorpusConfig(StrictModel):
    source: Literal["easyvqa", "parquet", "unime_json"] = Field(
        "easyvqa", description="embedded easy-VQA default, a Parquet corpus directory, or a UniME-V2/MMEB-train JSON file")
    path: str | None = Field(None, description="corpus directory (parquet) or JSON file (unime_json)")
    image_root: str | None = Field(None, description="directory that relative image paths are under")
    num_images: int = Field(40, ge=1, description="easyvqa: images to build the corpus from (3 queries each)")
    limit: int | None = Field(None, ge=1, description="keep only the first N queries (for smoke runs)")
    seed: int = Field(0, description="easyvqa: which images and questions are drawn")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="images larger than this are rejected")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source != "easyvqa" and not self.path:
            raise ValueError(f"corpus.path is required when corpus.source is {self.source!r}")
        return self


class ActorConfig(StrictModel):
    """Resources of one Ray Data actor pool (per actor)."""

    num_actors: int = Field(1, ge=1, description="actors in the pool")
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor (fractions let stages share a node)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor: 0 on CPU machines, 1 on a GPU cluster")
    batch_size: int = Field(16, ge=1, description="rows per batch handed to an actor")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads per actor (None: torch's default)")


class EmbedConfig(ActorConfig):
    model: str = Field(".cache/checkpoints/embedder", description="embedder checkpoint: local dir or hub id")
    device: str = Field("cpu", description="'cpu' or 'cuda'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")


class RetrievalConfig(StrictModel):
    top_k: int = Field(50, ge=1, description="candidates per query from the whole corpus, positive left out")
    index: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat is exact inner product")
    nlist: int = Field(1024, ge=1, description="ivf: inverted lists")
    nprobe: int = Field(32, ge=1, description="ivf: lists searched")
    hnsw_m: int = Field(32, ge=2, description="hnsw: graph degree")
    ef_search: int = Field(128, ge=1, description="hnsw: search breadth")
    query_chunk_size: int = Field(4096, ge=1, description="queries searched at once (bounds result memory)")
    use_gpu: bool = Field(False, description="move the index to all GPUs (needs faiss-gpu)")


class JudgeConfig(ActorConfig, EngineSettings):
    model: str = Field(".cache/checkpoints/judge", description="judge MLLM checkpoint: local dir or hub id")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per judge actor")
    batch_size: int = Field(8, ge=1, description="queries per actor batch (each brings 1 + top_k pairs)")


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
    write_unime_json: bool = Field(False, description="also write mined.json in UniME-V2's layout")
    ray_address: str | None = Field(None, description="ray.init address; None joins the job's cluster or starts one")
