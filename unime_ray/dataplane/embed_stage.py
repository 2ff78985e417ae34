"""The embedding stage: item rows in, the same rows out with an ``embedding`` tensor column.

Every input column is carried through (as ``ray.data.llm``'s stages do), so later stages
need no join to get back to the row. A row that cannot be embedded keeps a null
``embedding`` and says why in ``error``.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from unime_ray import metrics
from unime_ray.data.images import ImageError
from unime_ray.dataplane.stages import ITEM_COLUMNS, ActorStage, require_columns, row_item, set_column
from unime_ray.dataplane.tensors import VectorDtype, tensor_column
from unime_ray.failures import call_isolating_failures, exit_on_infrastructure_error


class EmbedUDF:
    """Rows with ``ITEM_COLUMNS`` -> the same rows plus ``embedding`` and ``error``."""

    INPUT_COLUMNS = ITEM_COLUMNS

    def __init__(self, model: str, device: str, dtype: str, image_root: str | None,
                 max_pixels: int, torch_threads: int | None = None, vector_dtype: VectorDtype = "float32",
                 budget: dict | None = None):
        from unime_ray.models.embedder import Embedder
        from unime_ray.models.loading import set_torch_threads

        set_torch_threads(torch_threads)
        # ``max_pixels`` refuses decompression bombs at decode; ``budget`` resizes for the model.
        self.embedder = Embedder.from_pretrained(model, device, dtype, **(budget or {}))
        self.image_root, self.max_pixels, self.vector_dtype = image_root, max_pixels, vector_dtype
        self.dim = int(self.embedder.model.config.get_text_config().hidden_size)

    @exit_on_infrastructure_error
    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "embed")
        start = time.perf_counter()
        items, errors = [], [None] * batch.num_rows
        for i, row in enumerate(batch.select(list(ITEM_COLUMNS)).to_pylist()):
            try:
                items.append((i, row_item(row, self.image_root, self.max_pixels)))
            except ImageError as error:
                errors[i] = str(error)
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
        batch = set_column(batch, "embedding", tensor_column(matrix, self.vector_dtype, valid))
        return set_column(batch, "error", pa.array(errors, pa.string()))


def embed_dataset(ds, embed, image_root: str | None, max_pixels: int):
    """``ds``'s item rows embedded by an actor pool (lazy). ``embed`` is an ``EmbedConfig``."""
    stage = ActorStage.from_config(embed)
    return stage.blocks(ds).map_batches(
        EmbedUDF,
        fn_constructor_kwargs={"model": embed.model, "device": embed.device, "dtype": embed.dtype,
                               "image_root": image_root, "max_pixels": max_pixels,
                               "torch_threads": embed.torch_threads, "vector_dtype": embed.vector_dtype,
                               "budget": {"min_pixels": embed.min_pixels, "max_pixels": embed.max_pixels}},
        **stage.map_batches_kwargs())
