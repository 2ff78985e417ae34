"""Config sections of Ray Data actor stages, shared by every job that runs one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unime_ray.config import StrictModel
from unime_ray.models.settings import EmbeddingChanges, PixelBudget


class ActorConfig(StrictModel):
    """Resources of one Ray Data actor pool (per actor)."""

    num_actors: int = Field(1, ge=1, description="actors in the pool")
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor (fractions let stages share a node)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor: 0 on CPU machines, 1 on a GPU cluster")
    batch_size: int = Field(16, ge=1, description="rows per batch handed to an actor")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads per actor (None: torch's default)")
    # An infrastructure error (engine death, device OOM) exits the actor; Ray restarts it and
    # retries the batch there. Bounded, so a batch that kills every engine fails the job.
    max_restarts: int = Field(8, ge=-1, description="restarts per actor after infrastructure failures (-1: no limit)")


class PrepConfig(StrictModel):
    """The CPU pool ahead of a model's pool: decodes images and fits them to the model's
    pixel budget (and renders prompts, for the judge), so the accelerator's actor only runs
    the model."""

    prep_actors: int = Field(1, ge=1, description="CPU actors preparing inputs ahead of the model's actors")
    prep_num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per preparation actor (cluster: 1 or more)")


class EmbedConfig(ActorConfig, PrepConfig, EmbeddingChanges, PixelBudget):
    model: str = Field(".cache/checkpoints/embedder", description="embedder checkpoint: local dir or hub id")
    device: str = Field("cpu", description="'cpu' or 'cuda'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    vector_dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored embeddings' dtype: float16 halves disk and shuffle volume")
