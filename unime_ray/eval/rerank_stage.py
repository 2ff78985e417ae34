"""The reranker as a Ray Data actor stage: one row per query with its top candidates."""

from __future__ import annotations

import pyarrow as pa

from unime_ray.data.images import ImageError
from unime_ray.dataplane.stages import ITEM_COLUMNS, require_columns, row_item
from unime_ray.models.inputs import Item, load_item


class RerankUDF:
    """Rows (the query's item columns, ``candidate_texts``, ``candidate_image_paths`` in the
    embedder's order) -> ``id``, ``order`` (candidate indices, best first), ``fallback``
    and ``error``; a row that fails keeps the embedder's order."""

    INPUT_COLUMNS = ITEM_COLUMNS + ("candidate_texts", "candidate_image_paths")

    def __init__(self, settings: dict, image_root: str | None, max_pixels: int, torch_threads: int | None = None):
        from unime_ray.models.loading import set_torch_threads
        from unime_ray.models.settings import RerankSettings

        set_torch_threads(torch_threads)
        self.reranker = RerankSettings.model_validate(settings).build()
        self.image_root, self.max_pixels = image_root, max_pixels

    def _request(self, row: dict) -> tuple[Item, list[Item]]:
        candidates = [load_item("", text, path, self.image_root, self.max_pixels)
                      for text, path in zip(row["candidate_texts"], row["candidate_image_paths"])]
        return row_item(row, self.image_root, self.max_pixels), candidates

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "rerank")
        rows = batch.to_pylist()
        orders = [list(range(len(row["candidate_texts"]))) for row in rows]
        fallbacks, errors = [False] * len(rows), [None] * len(rows)
        requests, owners = [], []
        for r, row in enumerate(rows):
            try:
                requests.append(self._request(row))
                owners.append(r)
            except ImageError as error:
                errors[r] = f"image: {error}"
        for r, ranking in zip(owners, self.reranker.rerank_batch(requests) if requests else []):
            orders[r], fallbacks[r], errors[r] = ranking.order, ranking.fallback, ranking.error
        return pa.table({
            "id": batch.column("id"),
            "order": pa.array(orders, pa.list_(pa.int64())),
            "fallback": pa.array(fallbacks, pa.bool_()),
            "error": pa.array(errors, pa.string()),
        })
