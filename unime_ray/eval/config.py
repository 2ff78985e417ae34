"""The evaluation job's config: tasks, the embedder, an optional reranker."""

from __future__ import annotations

from pydantic import Field

from unime_ray.config import StrictModel
from unime_ray.data.images import DEFAULT_MAX_PIXELS
from unime_ray.dataplane.config import ActorConfig, EmbedConfig
from unime_ray.models.settings import RerankSettings


class TasksConfig(StrictModel):
    path: str = Field("out/mmeb_mini", description="directory of MMEB-eval task files (.jsonl / .parquet)")
    image_root: str | None = Field(None, description="root of qry_img_path / tgt_img_path; default: the tasks dir")
    names: list[str] | None = Field(None, description="evaluate only these tasks; None: every task in the dir")
    max_queries: int | None = Field(None, ge=1, description="first N queries of each task (smoke runs)")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images are rejected")


class RerankConfig(ActorConfig, RerankSettings):
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per reranker actor")
    batch_size: int = Field(8, ge=1, description="queries per actor batch")


class EvalConfig(StrictModel):
    output_dir: str = Field(
        "out/eval", description="results.json, results.md, results.png, rejects.parquet/; embeddings/ and stages/")
    tasks: TasksConfig = TasksConfig()
    embed: EmbedConfig = EmbedConfig()
    rerank: RerankConfig = RerankConfig()
    recall_ks: list[int] = Field([5, 10], description="Recall@k reported for each k")
    label: str | None = Field(None, description="name of this run in tables and comparisons; default: the model dir")
    shuffle_partitions: int = Field(
        4, ge=1, description="hash partitions of the Ray Data joins and group-bys (cluster: about 2x the CPUs)")
