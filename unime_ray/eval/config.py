"""The evaluation job's config: tasks, the embedder, an optional reranker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unime_ray.config import StrictModel
from unime_ray.data.images import DEFAULT_MAX_PIXELS
from unime_ray.mining.config import EmbedConfig, JudgeConfig


class TasksConfig(StrictModel):
    path: str = Field("out/mmeb_mini", description="directory of MMEB-eval task files (.jsonl / .parquet)")
    image_root: str | None = Field(None, description="root of qry_img_path / tgt_img_path; default: the tasks dir")
    names: list[str] | None = Field(None, description="evaluate only these tasks; None: every task in the dir")
    max_queries: int | None = Field(None, ge=1, description="first N queries of each task (smoke runs)")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images are rejected")


class RerankConfig(JudgeConfig):
    """A reranker checkpoint (``jobs/train_reranker.py``'s OUT/model) on the embedder's top n."""

    model: str | None = Field(None, description="reranker checkpoint; None: no reranking")
    mode: Literal["listwise", "pointwise"] = Field("listwise", description="one prompt per query, or P(Yes) per pair")
    top_n: int = Field(5, ge=2, description="the embedder's top candidates that get reranked (the paper: 5)")
    batch_size: int = Field(8, ge=1, description="queries per actor batch")


class EvalConfig(StrictModel):
    output_dir: str = Field("out/eval", description="results.json, results.md, results.png, rejects.parquet")
    tasks: TasksConfig = TasksConfig()
    embed: EmbedConfig = EmbedConfig()
    rerank: RerankConfig = RerankConfig()
    recall_ks: list[int] = Field([5, 10], description="Recall@k reported for each k")
    label: str | None = Field(None, description="name of this run in tables and comparisons; default: the model dir")
