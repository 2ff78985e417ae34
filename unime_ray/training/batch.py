"""Mined records -> a training batch: query items, candidate items, and who is whose.

With ``dedup`` on, a candidate that appears several times in a batch (the same target
mined for several queries, or repeated cyclically within one record) is encoded once;
``candidate_index`` maps every (query, slot) back to its row. METHOD.md notes the
m x k forward passes as UniME-V2's cost problem; this is the suggested fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unime_ray.data.images import load_image
from unime_ray.models.inputs import Item


@dataclass
class EmbedBatch:
    queries: list[Item]
    candidates: list[Item]  # unique when built with dedup
    candidate_index: torch.Tensor  # [batch, 1 + k] rows of ``candidates``; slot 0 is the positive
    judge_scores: torch.Tensor  # [batch, 1 + k] P(Yes) of each (query, slot)

    @property
    def size(self) -> int:
        return len(self.queries)


def _item(instruction: str | None, text: str | None, image_ref: str | None, image_root: str | None) -> Item:
    return Item(instruction or "", text or "", load_image(None, image_ref or None, image_root))


def build_batch(records: list[dict], image_root: str | None, num_negatives: int = 8, dedup: bool = True) -> EmbedBatch:
    """Candidates per query: the positive, then its first ``num_negatives`` mined negatives."""
    queries, candidates, index, scores = [], [], [], []
    row_of: dict[str, int] = {}
    for record in records:
        if len(record["neg_ids"]) < num_negatives:
            raise ValueError(f"record {record['query_id']!r} has {len(record['neg_ids'])} negatives, "
                             f"training asks for {num_negatives}")
        queries.append(_item(record["query_instruction"], record["query_text"], record["query_image"], image_root))
        slots = [(record["positive_id"], record["pos_instruction"], record["pos_text"], record["pos_image"])]
        slots += list(zip(record["neg_ids"], record["neg_instructions"], record["neg_texts"], record["neg_images"]))
        rows = []
        for target_id, instruction, text, image in slots[: 1 + num_negatives]:
            if not dedup or target_id not in row_of:
                row_of[target_id] = len(candidates)
                candidates.append(_item(instruction, text, image, image_root))
            rows.append(row_of[target_id] if dedup else len(candidates) - 1)
        index.append(rows)
        scores.append([record["query_pos_score"], *record["neg_scores"][:num_negatives]])
    return EmbedBatch(queries, candidates, torch.tensor(index, dtype=torch.long),
                      torch.tensor(scores, dtype=torch.float32))
