"""A judge read off labels: P(Yes) is 1 for a candidate with the positive's label, else 0.

With a labelled corpus (every image captioned "a red circle" answers the query "a red
circle"), this is the oracle the MLLM judge approximates. Mining with it
(``judge.labels``) gives records whose negatives are known negatives: the replication's
round 0 trains its judge on them, and a model judge's false-negative detection is
measured against it.

Labels are a Parquet table of ``target_id`` and ``label``; a target without a row is
labelled by its own id, so only itself answers its queries. The table lives in the
stage's actor (like an index shard), never in the driver.

Two variants make judges of known quality, for measuring how much the method depends on
its judge:
- ``graded``: a labelled candidate whose label shares words with the positive's (articles
  aside: "a red triangle" for "a red circle") scores ``partial`` x the share of the
  positive's words it has; unlabelled targets stay 1/0.
- noise calibrated to an AUC: each score b becomes sigmoid(GAP (2b - 1) + e), e ~ N(0, sigma^2)
  drawn per pair, seeded by the query. For 1/0 scores a positive then beats a negative
  with probability Phi(sqrt(2) GAP / sigma), so ``noise_sigma`` sets sigma from the AUC.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.labelled_corpus import LABEL_SCHEMA
from unime_ray.dataplane.stages import require_columns, set_column
from unime_ray.rng import seeded_rng

Grading = Literal["exact", "graded"]
GAP = 4.0  # the noisy judge's logit for a positive (a negative: -GAP): P(Yes) 0.982 without noise
ARTICLES = frozenset({"a", "an", "the"})


def label_scores(candidate_labels: list[str], positive_label: str) -> list[float]:
    """1.0 where a candidate's label is the positive's, else 0.0."""
    return [1.0 if label == positive_label else 0.0 for label in candidate_labels]


def graded_scores(candidate_labels: list[str], positive_label: str, labelled: list[bool],
                  partial: float) -> list[float]:
    """1.0 for the positive's label; for a labelled candidate with another label, ``partial``
    x the share of the positive's words (articles aside) that its label has; else 0.0.
    ``labelled``: per candidate, whether its label came from the table (an id shares nothing)."""
    wanted = [w for w in positive_label.split() if w not in ARTICLES]
    scores = []
    for label, known in zip(candidate_labels, labelled):
        if label == positive_label:
            scores.append(1.0)
        elif known and wanted:
            words = set(label.split())
            scores.append(partial * sum(w in words for w in wanted) / len(wanted))
        else:
            scores.append(0.0)
    return scores


def noise_sigma(auc: float) -> float:
    """The noise that gives 1/0 scores this AUC: Phi(sqrt(2) GAP / sigma) = auc."""
    if not 0.5 < auc < 1:
        raise ValueError(f"a noisy judge's AUC lies strictly between 0.5 and 1, got {auc}")
    return float(np.sqrt(2) * GAP / NormalDist().inv_cdf(auc))


def noisy_scores(scores: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """sigmoid(GAP (2 s - 1) + N(0, sigma^2)) per score, in tanh form (no overflow)."""
    logits = GAP * (2 * np.asarray(scores, np.float64) - 1) + rng.normal(0.0, sigma, len(scores))
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def read_labels(path: str) -> dict[str, str]:
    table = pq.read_table(path, columns=LABEL_SCHEMA.names)
    if table.column("target_id").null_count:
        raise ValueError(f"labels at {path}: target_id has nulls")
    return dict(zip(table.column("target_id").to_pylist(), table.column("label").to_pylist()))


class LabelJudgeUDF:
    """Judge rows (``id``, ``target_ids``: the positive first, then the candidates) ->
    the rows with ``positive_score``, ``candidate_scores``, ``error`` and zero token
    counts, as the model judge's stage writes them."""

    def __init__(self, labels_path: str, grading: Grading = "exact", partial: float = 0.5,
                 auc: float | None = None, seed: int = 0):
        self.labels = read_labels(labels_path)
        self.grading, self.partial, self.seed = grading, partial, seed
        self.sigma = None if auc is None else noise_sigma(auc)

    def scores(self, query_id: str, target_ids: list[str]) -> list[float]:
        """The positive's score, then each candidate's."""
        labels = [self.labels.get(t, t) for t in target_ids]
        if self.grading == "graded" and target_ids[0] in self.labels:
            known = [t in self.labels for t in target_ids]
            scores = [1.0, *graded_scores(labels[1:], labels[0], known[1:], self.partial)]
        else:
            scores = [1.0, *label_scores(labels[1:], labels[0])]
        if self.sigma is None:
            return scores
        return noisy_scores(np.array(scores), self.sigma, seeded_rng(query_id, self.seed)).tolist()

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("id", "target_ids"), "label judge")
        scored = [self.scores(q, t) for q, t in zip(batch.column("id").to_pylist(),
                                                    batch.column("target_ids").to_pylist())]
        zeros = pa.array([0] * batch.num_rows, pa.int64())
        for name, values in (("positive_score", pa.array([s[0] for s in scored], pa.float64())),
                             ("candidate_scores", pa.array([s[1:] for s in scored], pa.list_(pa.float64()))),
                             ("error", pa.nulls(batch.num_rows, pa.string())),
                             ("prompt_tokens", zeros), ("cached_tokens", zeros)):
            batch = set_column(batch, name, values)
        return batch


def label_judge_dataset(rows, labels_path: str, grading: Grading = "exact", partial: float = 0.5,
                        auc: float | None = None, seed: int = 0):
    return rows.map_batches(LabelJudgeUDF, fn_constructor_kwargs={
        "labels_path": labels_path, "grading": grading, "partial": partial, "auc": auc, "seed": seed},
        batch_size=64, batch_format="pyarrow", num_cpus=0.25, concurrency=1)
