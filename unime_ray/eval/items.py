"""The items to embed: every query and every distinct candidate of the benchmark, once.

A classification task's label set (ImageNet-1K: 1,000 class names) is shared by all its
queries; its candidates have content ids (``tasks.candidate_id``), so exploding the query
rows into item rows and keeping one row per id embeds each label once. The dedup is a
Ray Data group-by on the id: no worker or driver holds the whole item list.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# The embed stage's input columns (``dataplane.stages.ITEM_COLUMNS``).
ITEM_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("instruction", pa.string()),
                         pa.field("text", pa.string()), pa.field("image", pa.binary()),
                         pa.field("image_path", pa.string())])


def _items(ids, texts, image_paths) -> pa.Table:
    n = len(ids)
    return pa.Table.from_arrays([ids, pa.nulls(n, pa.string()), texts, pa.nulls(n, pa.binary()), image_paths],
                                schema=ITEM_SCHEMA)


def item_rows(batch: pa.Table) -> pa.Table:
    """Valid query rows -> their own item and one item per candidate (duplicates kept)."""
    batch = batch.filter(pc.is_null(batch["error"]))
    candidate_paths = pc.list_flatten(batch["candidate_image_paths"])
    # "" marks a candidate without an image in MMEB's files; the embed stage wants null.
    candidate_paths = pc.if_else(pc.equal(candidate_paths, ""), pa.scalar(None, pa.string()), candidate_paths)
    return pa.concat_tables([
        _items(batch["id"], batch["text"], batch["image_path"]),
        _items(pc.list_flatten(batch["candidate_ids"]), pc.list_flatten(batch["candidate_texts"]), candidate_paths),
    ])


def first_row(group: pa.Table) -> pa.Table:
    return group.slice(0, 1)


def unique_items(queries, num_partitions: int):
    """``queries`` (``tasks.QUERY_SCHEMA`` rows) -> one ``ITEM_SCHEMA`` row per distinct id."""
    return queries.map_batches(item_rows, batch_format="pyarrow").groupby("id", num_partitions=num_partitions) \
        .map_groups(first_row, batch_format="pyarrow")
