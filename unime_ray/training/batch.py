"""Mined records -> a training batch: query items, candidate items, and who is whose.

With ``dedup`` on, a candidate that appears several times in a batch (the same target
mined for several queries, or repeated cyclically within one record) is encoded once;
``candidate_index`` maps every (query, slot) back to its row. METHOD.md notes the
m x k forward passes as UniME-V2's cost problem; this is the suggested fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unime_ray.models.inputs import Item
from unime_ray.training.records import RECORD_ERRORS, negative_item, positive_item, query_item, require_negatives


@dataclass
class EmbedBatch:
    queries: list[Item]
    candidates: list[Item]  # unique when built with dedup
    candidate_index: torch.Tensor  # [batch, 1 + k] rows of ``candidates``; slot 0 is the positive
    judge_scores: torch.Tensor  # [batch, 1 + k] P(Yes) of each (query, slot)
    skipped: list[tuple[str, str]]  # (query id, reason) of records left out

    @property
    def size(self) -> int:
        return len(self.queries)


def _record_items(record: dict, image_root: str | None, num_negatives: int):
    """(query item, [(target id, item)] for the positive and negatives); raises on a bad record."""
    require_negatives(record, num_negatives)
    slots = [(record["positive_id"], positive_item(record, image_root))]
    slots += [(record["neg_ids"][i], negative_item(record, i, image_root)) for i in range(num_negatives)]
    return query_item(record, image_root), slots


def build_batch(records: list[dict], image_root: str | None, num_negatives: int = 8, dedup: bool = True) -> EmbedBatch:
    """Candidates per query: the positive, then its first ``num_negatives`` mined negatives.

    A record with a missing or unreadable image, or too few negatives, is left out and
    listed in ``skipped``; the rest of the batch trains.
    """
    queries, candidates, index, scores, skipped = [], [], [], [], []
    row_of: dict[str, int] = {}
    for record in records:
        try:
            query, slots = _record_items(record, image_root, num_negatives)
        except RECORD_ERRORS as error:
            skipped.append((record["query_id"], str(error)))
            continue
        queries.append(query)
        rows = []
        for target_id, item in slots:
            if not dedup or target_id not in row_of:
                row_of[target_id] = len(candidates)
                candidates.append(item)
            rows.append(row_of[target_id] if dedup else len(candidates) - 1)
        index.append(rows)
        scores.append([record["query_pos_score"], *record["neg_scores"][:num_negatives]])
    return EmbedBatch(queries, candidates, torch.tensor(index, dtype=torch.long).reshape(len(index), 1 + num_negatives),
                      torch.tensor(scores, dtype=torch.float32).reshape(len(index), 1 + num_negatives), skipped)
