"""The embedding stage: item rows in, the same rows out with an ``embedding`` tensor column.

Two pools, as in the judge stage: a CPU pool decodes each image and fits it to the
embedder's pixel budget; the embedder's pool gets raw RGB at size and only runs the
processor's normalisation, the tokenizer and the model.

Every input column is carried through (as ``ray.data.llm``'s stages do), so later stages
need no join to get back to the row. A row that cannot be embedded keeps a null
``embedding`` and says why in ``error``.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from unime_ray import metrics
from unime_ray.data.images import ImageError, load_image
from unime_ray.dataplane.stages import ITEM_COLUMNS, PIXELS, ActorStage, from_pixels, pixels, require_columns, set_column
from unime_ray.dataplane.tensors import VectorDtype, tensor_column
from unime_ray.failures import call_isolating_failures, exit_on_infrastructure_error
from unime_ray.models.inputs import Item, fit_image


class EmbedPrepUDF:
    """The CPU stage ahead of the embedder: rows -> the same rows plus ``pixels`` (the image
    decoded and fitted to the embedder's pixel budget, raw RGB) and ``error`` (an image that
    does not decode, or that the processor refuses). Needs the processor only, no model."""

    INPUT_COLUMNS = ITEM_COLUMNS

    def __init__(self, model: str, image_root: str | None, max_pixels: int, budget: dict | None = None,
                 format: str | None = None):
        from unime_ray.models.formats import resolve_input_format
        from unime_ray.models.loading import load_processor

        # ``max_pixels`` refuses decompression bombs at decode; ``budget`` and the input
        # format's fixed size (if it has one) resize for the model.
        self.image_processor = load_processor(model, **(budget or {})).image_processor
        self.format = resolve_input_format(model, format)
        self.image_root, self.max_pixels = image_root, max_pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "embed preparation")
        values, errors = [], []
        for row in batch.select(["image", "image_path"]).to_pylist():
            value = error = None
            try:
                image = load_image(row["image"], row["image_path"], self.image_root, self.max_pixels)
                value = pixels(image and fit_image(self.image_processor, self.format.resize(image)))
            except ImageError as refused:
                error = str(refused)
            except ValueError as refused:  # the processor's: e.g. an aspect ratio over 200
                error = f"embedding failed: {type(refused).__name__}: {refused}"
            values.append(value)
            errors.append(error)
        batch = set_column(batch, "pixels", pa.array(values, PIXELS))
        return set_column(batch, "error", pa.array(errors, pa.string()))


class EmbedUDF:
    """Prepared rows (``EmbedPrepUDF``) -> the same rows, without ``pixels``, plus
    ``embedding``; ``error`` keeps the preparation's reasons and adds the model's."""

    INPUT_COLUMNS = ("instruction", "text", "pixels", "error")

    def __init__(self, model: str, device: str, dtype: str, torch_threads: int | None = None,
                 vector_dtype: VectorDtype = "float32", budget: dict | None = None, format: str | None = None,
                 pooling: str | None = None, bidirectional: bool | None = None):
        from unime_ray.models.embedder import Embedder
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        self.embedder = Embedder.from_pretrained(model, device, dtype, **(budget or {}), format=format,
                                                 pooling=pooling, bidirectional=bidirectional)
        self.vector_dtype = vector_dtype
        self.dim = int(self.embedder.model.config.get_text_config().hidden_size)

    @exit_on_infrastructure_error
    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "embed")
        start = time.perf_counter()
        rows = batch.select(list(self.INPUT_COLUMNS)).to_pylist()
        errors = [row["error"] for row in rows]
        items = [(i, Item(row["instruction"] or "", row["text"] or "", from_pixels(row["pixels"])))
                 for i, row in enumerate(rows) if row["error"] is None]
        matrix = np.zeros((batch.num_rows, self.dim), np.float32)  # [rows, dim]
        valid = np.zeros(batch.num_rows, bool)
        outcomes = call_isolating_failures(self.embedder.embed, [item for _, item in items]) if items else []
        for (i, _), (vector, error) in zip(items, outcomes):
            if error is None:
                matrix[i], valid[i] = vector, True
            else:
                errors[i] = f"embedding failed: {error}"
        metrics.inc("rows_embedded", int(valid.sum()))
        metrics.observe("embed_batch_seconds", time.perf_counter() - start)
        batch = set_column(batch.drop_columns(["pixels"]), "embedding", tensor_column(matrix, self.vector_dtype, valid))
        return set_column(batch, "error", pa.array(errors, pa.string()))


def stage_arguments(embed, image_root: str | None, max_pixels: int) -> tuple[dict, dict]:
    """Constructor arguments of the CPU stage and of the embedder's stage: the same model,
    pixel budget and input format, so the images arrive fitted as the embedder reads them."""
    budget = {"min_pixels": embed.min_pixels, "max_pixels": embed.max_pixels}
    shared = {"model": embed.model, "budget": budget, "format": embed.format}
    return ({**shared, "image_root": image_root, "max_pixels": max_pixels},
            {**shared, "device": embed.device, "dtype": embed.dtype, "torch_threads": embed.torch_threads,
             "vector_dtype": embed.vector_dtype, "pooling": embed.pooling, "bidirectional": embed.bidirectional})


def embed_dataset(ds, embed, image_root: str | None, max_pixels: int):
    """``ds``'s item rows embedded (lazy): a CPU pool decodes and fits the images, then the
    embedder's pool runs the model. ``embed`` is an ``EmbedConfig``."""
    import ray.data

    stage = ActorStage.from_config(embed)
    prep_arguments, embed_arguments = stage_arguments(embed, image_root, max_pixels)
    prepared = stage.blocks(ds).map_batches(
        EmbedPrepUDF, fn_constructor_kwargs=prep_arguments,
        compute=ray.data.ActorPoolStrategy(size=embed.prep_actors), num_cpus=embed.prep_num_cpus,
        batch_size=stage.batch_size, batch_format="pyarrow", max_restarts=stage.max_restarts)
    return prepared.map_batches(EmbedUDF, fn_constructor_kwargs=embed_arguments, **stage.map_batches_kwargs())
