"""The selection stage: a judged query row -> its mined record, or the reason it has none.

Runs as a Ray Data map over the judge stage's output, which already carries every pair's
target row, so records are written by the workers with no lookup.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray.data.image_refs import image_ref
from unime_ray.mining.judge_stage import TARGET_FIELDS
from unime_ray.mining.select import item_modality, select_hard_negatives
from unime_ray.retrieval.shards import anchor_similarities
from unime_ray.rng import seeded_rng

RECORD_SCHEMA = pa.schema([
    pa.field("query_id", pa.string()), pa.field("dataset", pa.string()),
    pa.field("query_instruction", pa.string()), pa.field("query_text", pa.string()),
    pa.field("query_image", pa.string()), pa.field("positive_id", pa.string()),
    pa.field("pos_instruction", pa.string()), pa.field("pos_text", pa.string()), pa.field("pos_image", pa.string()),
    pa.field("query_pos_score", pa.float64()), pa.field("neg_ids", pa.list_(pa.string())),
    pa.field("neg_instructions", pa.list_(pa.string())), pa.field("neg_texts", pa.list_(pa.string())),
    pa.field("neg_images", pa.list_(pa.string())), pa.field("neg_scores", pa.list_(pa.float64())),
    pa.field("used_fallback", pa.bool_()), pa.field("false_negatives_dropped", pa.int64()),
])
# Beside each record while the stage runs: why there is none, and the pairs that failed.
SELECTED_SCHEMA = RECORD_SCHEMA.append(pa.field("error", pa.string())).append(pa.field("pairs_failed", pa.int64()))


# Beside the judged rows under the adaptive margin: each candidate's similarity to the positive.
POSITIVE_SIMS = "candidate_positive_sims"


def _target(row: dict, i: int) -> dict:
    return {c: row[field][i] for c, field in TARGET_FIELDS.items()}


def select_record(row: dict, s, output_dir: str) -> dict:
    """One judged query row -> its record, or ``error`` saying why it has none. ``s`` is
    the ``SelectConfig``; image references are relative to ``output_dir``."""
    scores = row["candidate_scores"]
    ok = [i for i, score in enumerate(scores) if score is not None]
    record = {"query_id": row["id"], "pairs_failed": len(scores) - len(ok)}
    if row["error"]:
        return {**record, "error": row["error"]}
    if not ok:
        return {**record, "error": "no candidate could be judged"}
    sims = row.get(POSITIVE_SIMS)
    if s.rule == "adaptive_margin":
        unmeasured = [row["target_ids"][1 + i] for i in ok if sims[i] is None]
        if len(unmeasured) == len(ok):  # all of them: it is the positive that has none
            return {**record, "error": f"positive {row['target_ids'][0]!r} has no embedding (see the embed "
                                       "stage's rejects): the adaptive margin measures candidates against it"}
        if unmeasured:
            return {**record, "error": f"candidates {unmeasured} have no embedding: the adaptive margin needs one"}
    modality = lambda i: item_modality(row["target_texts"][i], bool(  # noqa: E731
        row["target_images"][i] or row["target_image_paths"][i]))
    pick = select_hard_negatives(
        [scores[i] for i in ok], row["positive_score"], rule=s.rule, beta=s.beta, margin=s.margin,
        absolute_margin=s.absolute_margin, min_score=s.min_score, max_score=s.max_score, range_min=s.range_min,
        range_max=s.range_max, ranks=ok, positive_sims=None if sims is None else [sims[i] for i in ok],
        adaptive_base=s.adaptive_base, adaptive_scale=s.adaptive_scale, modality=s.modality,
        modalities=None if s.modality == "any" else [modality(1 + i) for i in ok],
        positive_modality=None if s.modality == "any" else modality(0),
        other_modality_share=s.other_modality_share, k=s.k, step=s.step,
        rng=seeded_rng(row["id"], s.seed))
    positive = _target(row, 0)
    negatives = [_target(row, 1 + ok[i]) for i in pick.indices]  # slot 0 is the positive
    ref = lambda item: image_ref(output_dir, item["image"], item["image_path"])  # noqa: E731
    return {
        **record, "dataset": row["dataset"],
        "query_instruction": row["instruction"] or "", "query_text": row["text"] or "", "query_image": ref(row),
        "positive_id": positive["id"], "pos_instruction": positive["instruction"] or "",
        "pos_text": positive["text"] or "", "pos_image": ref(positive), "query_pos_score": row["positive_score"],
        "neg_ids": [n["id"] for n in negatives], "neg_instructions": [n["instruction"] or "" for n in negatives],
        "neg_texts": [n["text"] or "" for n in negatives], "neg_images": [ref(n) for n in negatives],
        "neg_scores": pick.scores, "used_fallback": pick.fallback, "false_negatives_dropped": pick.dropped,
    }


def with_positive_sims(batch: pa.Table, shards: list) -> pa.Table:
    """Judged rows (``target_ids``: the positive, then the candidates) -> the same rows plus
    ``candidate_positive_sims``, each candidate's cosine similarity to the positive, read
    from the index ``shards``' stored vectors (null where either has no embedding)."""
    target_ids = batch["target_ids"].combine_chunks()  # never empty: the pairs stage puts the positive first
    sims = anchor_similarities(pc.list_element(target_ids, 0), pc.list_slice(target_ids, 1), shards)
    return batch.append_column(POSITIVE_SIMS, sims)


def select_records(batch: pa.Table, select, output_dir: str) -> pa.Table:
    """Judged query rows -> ``SELECTED_SCHEMA`` rows (``error`` set: no record)."""
    return pa.Table.from_pylist([select_record(row, select, output_dir) for row in batch.to_pylist()],
                                schema=SELECTED_SCHEMA)
