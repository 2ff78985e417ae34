"""Mined records as training input: the columns read, the items in them, endless batches.

Shared by every trainer: the embedder and the reranker read the same records.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

from unime_ray.data.images import ImageError
from unime_ray.models.inputs import Item, load_item

logger = logging.getLogger(__name__)

RECORD_COLUMNS = ["query_id", "query_instruction", "query_text", "query_image", "positive_id", "pos_instruction",
                  "pos_text", "pos_image", "query_pos_score", "neg_ids", "neg_instructions", "neg_texts",
                  "neg_images", "neg_scores"]

# What makes one record unusable without stopping training; anything else is a bug.
RECORD_ERRORS = (ImageError, ValueError)


def query_item(record: dict, image_root: str | None) -> Item:
    return load_item(record["query_instruction"], record["query_text"], record["query_image"], image_root)


def positive_item(record: dict, image_root: str | None) -> Item:
    return load_item(record["pos_instruction"], record["pos_text"], record["pos_image"], image_root)


def negative_item(record: dict, index: int, image_root: str | None) -> Item:
    return load_item(record["neg_instructions"][index], record["neg_texts"][index], record["neg_images"][index],
                     image_root)


def require_negatives(record: dict, needed: int) -> None:
    if len(record["neg_ids"]) < needed:
        raise ValueError(f"{len(record['neg_ids'])} negatives, training asks for {needed}")


def record_batches(shard, batch_size: int, seed: int, shuffle_buffer: int = 1024) -> Iterator[list[dict]]:
    """Endless record batches from this worker's shard, epoch after epoch, each epoch in
    its own seeded order (reproducible, different across epochs).

    Mined records arrive sorted by query id, i.e. task after task; the local shuffle
    buffer mixes them (fully, for shards up to ``shuffle_buffer`` records).
    """
    epoch = 0
    while True:
        produced = False
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=max(shuffle_buffer, 4 * batch_size),
                                        local_shuffle_seed=seed + epoch):
            produced = True
            yield batch.to_pylist()
        if not produced:
            raise ValueError(f"this worker's shard has fewer than {batch_size} records; "
                             "lower per_worker_batch_size or use fewer workers")
        epoch += 1


def next_trainable_batch(batches: Iterator[list[dict]], build: Callable[[list[dict]], object], skipped: list):
    """The next built batch with at least one usable record.

    ``build`` returns an object with ``size`` and ``skipped`` ((query id, reason) of the
    records it left out); those are logged and collected into ``skipped``.
    """
    while True:
        batch = build(next(batches))
        for query_id, reason in batch.skipped:
            logger.warning("skipped training record %r: %s", query_id, reason)
        skipped.extend(batch.skipped)
        if batch.size:
            return batch
