"""The reranker as a Ray Data actor stage: one row per query with its top candidates."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.data.images import ImageError
from unime_ray.dataplane.stages import ITEM_COLUMNS, ActorStage, require_columns, row_item, set_column
from unime_ray.eval.scoring import RANKED_SCHEMA
from unime_ray.failures import exit_on_infrastructure_error
from unime_ray.models.inputs import Item, load_item

# ``rerank_dataset``'s rows as written: the ranked rows without their candidate lists, with
# the reranker's outcome and the gold's new ``rank``.
RERANKED_SCHEMA = pa.schema([
    *(f for f in RANKED_SCHEMA if f.name not in ("candidate_texts", "candidate_image_paths")),
    pa.field("order", pa.list_(pa.int64())), pa.field("fallback", pa.bool_()), pa.field("embedder_rank", pa.int64()),
])


class RerankUDF:
    """Rows (the query's item columns, ``candidate_texts``, ``candidate_image_paths`` in the
    embedder's order) -> the same rows plus ``order`` (candidate indices, best first),
    ``fallback`` and ``error``; a row that fails keeps the embedder's order."""

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

    @exit_on_infrastructure_error
    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.INPUT_COLUMNS, "rerank")
        rows = batch.select(list(self.INPUT_COLUMNS)).to_pylist()
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
        batch = set_column(batch, "order", pa.array(orders, pa.list_(pa.int64())))
        batch = set_column(batch, "fallback", pa.array(fallbacks, pa.bool_()))
        return set_column(batch, "error", pa.array(errors, pa.string()))


def reranked_rank(rank: int, order: list[int]) -> int:
    """The gold's new 0-based rank: the embedder put it at ``rank``, and the reranker
    reordered the embedder's first ``len(order)`` candidates (``order`` is a permutation
    of ``range(len(order))``, best first)."""
    return order.index(rank) if rank < len(order) else rank


def with_reranked_ranks(batch: pa.Table) -> pa.Table:
    """Reranked rows -> the same rows, ``embedder_rank`` keeping the embedder's ``rank``; an
    explicit order has no ties."""
    ranks = [reranked_rank(rank, order) for rank, order in zip(batch["rank"].to_pylist(), batch["order"].to_pylist())]
    batch = set_column(batch, "embedder_rank", batch["rank"])
    batch = set_column(batch, "ties", pa.array([0] * batch.num_rows, pa.int64()))
    return set_column(batch, "rank", pa.array(ranks, pa.int64()))


def rerank_outcomes(batch: pa.Table, top_n: int) -> pa.Table:
    """Reranked rows -> ``fallbacks`` and ``errors`` as 0/1, and one-hot ``pick_i`` (the
    reranker put the embedder's i-th candidate first) and ``gold_i`` (the embedder ranked
    the gold i-th), i < ``top_n``, to be summed: a reranker whose picks pile up on one
    position whatever the golds' positions reads its list's order, not its content."""
    columns = {"fallbacks": pc.cast(batch["fallback"], pa.int64()),
               "errors": pc.cast(batch["error"].is_valid(), pa.int64())}
    picks = [order[0] if order else -1 for order in batch["order"].to_pylist()]
    golds = batch["embedder_rank"].fill_null(-1).to_pylist()
    for i in range(top_n):
        columns[f"pick_{i}"] = pa.array([int(p == i) for p in picks], pa.int64())
        columns[f"gold_{i}"] = pa.array([int(g == i) for g in golds], pa.int64())
    return pa.table(columns)


def rerank_dataset(ranked, config, image_root: str | None, max_pixels: int):
    """The kept ``ranked`` rows (``scoring.RANKED_SCHEMA``) through the reranker's actor
    pool, with their reranked ``rank`` (lazy). ``config`` is a ``RerankConfig``."""
    from unime_ray.models.settings import RerankSettings

    settings = config.model_dump(include=set(RerankSettings.model_fields), mode="json")
    stage = ActorStage.from_config(config)
    return stage.blocks(ranked).map_batches(
        RerankUDF,
        fn_constructor_kwargs={"settings": settings, "image_root": image_root, "max_pixels": max_pixels,
                               "torch_threads": config.torch_threads},
        **stage.map_batches_kwargs()).map_batches(with_reranked_ranks, batch_format="pyarrow")
