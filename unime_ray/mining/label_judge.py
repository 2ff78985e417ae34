"""A judge read off labels: P(Yes) is 1 for a candidate with the positive's label, else 0.

With a labelled corpus (every image captioned "a red circle" answers the query "a red
circle"), this is the oracle the MLLM judge approximates. Mining with it
(``judge.labels``) gives records whose negatives are known negatives: the replication's
round 0 trains its judge on them, and a model judge's false-negative detection is
measured against it.

Labels are a Parquet table of ``target_id`` and ``label``; a target without a row is
labelled by its own id, so only itself answers its queries. The table lives in the
stage's actor (like an index shard), never in the driver.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.labelled_corpus import LABEL_SCHEMA
from unime_ray.dataplane.stages import require_columns, set_column


def label_scores(candidate_labels: list[str], positive_label: str) -> list[float]:
    """1.0 where a candidate's label is the positive's, else 0.0."""
    return [1.0 if label == positive_label else 0.0 for label in candidate_labels]


def read_labels(path: str) -> dict[str, str]:
    table = pq.read_table(path, columns=LABEL_SCHEMA.names)
    if table.column("target_id").null_count:
        raise ValueError(f"labels at {path}: target_id has nulls")
    return dict(zip(table.column("target_id").to_pylist(), table.column("label").to_pylist()))


class LabelJudgeUDF:
    """Judge rows (``target_ids``: the positive first, then the candidates) -> the rows with
    ``positive_score``, ``candidate_scores``, ``error`` and zero token counts, as the model
    judge's stage writes them."""

    def __init__(self, labels_path: str):
        self.labels = read_labels(labels_path)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("target_ids",), "label judge")
        candidates = []
        for target_ids in batch.column("target_ids").to_pylist():
            labels = [self.labels.get(t, t) for t in target_ids]
            candidates.append(label_scores(labels[1:], labels[0]))
        zeros = pa.array([0] * batch.num_rows, pa.int64())
        for name, values in (("positive_score", pa.array([1.0] * batch.num_rows, pa.float64())),
                             ("candidate_scores", pa.array(candidates, pa.list_(pa.float64()))),
                             ("error", pa.nulls(batch.num_rows, pa.string())),
                             ("prompt_tokens", zeros), ("cached_tokens", zeros)):
            batch = set_column(batch, name, values)
        return batch


def label_judge_dataset(rows, labels_path: str):
    return rows.map_batches(LabelJudgeUDF, fn_constructor_kwargs={"labels_path": labels_path}, batch_size=64,
                            batch_format="pyarrow", num_cpus=0.25, concurrency=1)
