"""Where a corpus comes from: the ``corpus`` section of the mining and index jobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel
from unime_ray.data.images import DEFAULT_MAX_PIXELS


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
