"""Ray Data actor stages: the resources of a pool, and the column contract of its UDFs.

A UDF declares its input columns, returns exactly one output row per input row, and
reports a failed row in an ``error`` column instead of raising. UDFs never touch Ray;
``ActorStage`` holds the pool's resources and turns them into ``map_batches`` arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
from PIL import Image

from unime_ray.data.images import load_image
from unime_ray.models.inputs import Item

ITEM_COLUMNS = ("id", "instruction", "text", "image", "image_path")


def require_columns(batch: pa.Table, columns, stage: str) -> None:
    missing = [c for c in columns if c not in batch.column_names]
    if missing:
        raise KeyError(f"{stage} stage needs columns {missing}; the batch has {batch.column_names}")


def row_item(row: dict, image_root: str | None, max_pixels: int) -> Item:
    """A corpus row as a model ``Item`` (raises ``ImageError`` on a bad image)."""
    image = load_image(row.get("image"), row.get("image_path"), image_root, max_pixels)
    return Item(row.get("instruction") or "", row.get("text") or "", image)


# An image decoded and fitted to a model's pixel budget by a CPU stage, as raw RGB: the
# model's actor rebuilds it without decoding or resizing.
PIXELS = pa.struct([pa.field("height", pa.int32()), pa.field("width", pa.int32()), pa.field("rgb", pa.binary())])


def pixels(image: Image.Image | None) -> dict | None:
    return None if image is None else {"height": image.height, "width": image.width, "rgb": image.tobytes()}


def from_pixels(value: dict | None) -> Image.Image | None:
    return None if value is None else Image.frombytes("RGB", (value["width"], value["height"]), value["rgb"])


def set_column(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """``batch`` with column ``name`` replaced or appended."""
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


@dataclass
class ActorStage:
    """Resources of one actor-pool stage: what ``map_batches`` needs beside the UDF."""

    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 16
    max_restarts: int = 8
    engine_workers: int = 1  # an engine's tensor x pipeline parallel workers

    @classmethod
    def from_config(cls, config) -> "ActorStage":
        engine = getattr(config, "engine_kwargs", {})
        workers = engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1)
        return cls(config.num_actors, config.num_cpus, config.num_gpus, config.batch_size, config.max_restarts,
                   workers)

    def blocks(self, ds, batches_per_block: int = 4):
        """``ds`` in blocks of a few batches. Ray Data gives an actor a whole block per task:
        a read of many small files can arrive as one block of the whole table, which one
        actor would then process alone, holding all of it. Small blocks keep every actor
        busy and each one's memory that of a few batches."""
        return ds.repartition(target_num_rows_per_block=self.batch_size * batches_per_block)

    def map_batches_kwargs(self) -> dict[str, Any]:
        import ray.data

        kwargs = {
            "compute": ray.data.ActorPoolStrategy(size=self.num_actors),
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "batch_size": self.batch_size,
            "batch_format": "pyarrow",
            # Ray Data then retries a dead actor's batch (max_task_retries) on its restart.
            "max_restarts": self.max_restarts,
        }
        if self.engine_workers > 1:
            # As ray.data.llm does: the actor holds no device itself; each actor gets a placement
            # group of one bundle per engine worker, which vLLM's Ray executor fills (captured
            # as the actor's child tasks), so an engine's GPUs are reserved together or not at all.
            bundle = {"GPU": self.num_gpus, "CPU": self.num_cpus} if self.num_gpus else {"CPU": self.num_cpus}
            kwargs.update(num_gpus=0, num_cpus=0,
                          ray_remote_args_fn=partial(engine_placement, [bundle] * self.engine_workers))
        return kwargs


def engine_placement(bundles: list[dict]) -> dict[str, Any]:
    """Remote args that run an actor in a new placement group of ``bundles`` (one per
    engine worker), its children included."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group(bundles, strategy="PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)}
