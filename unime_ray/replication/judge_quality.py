"""How good a judge is, against labels: AUC of P(Yes) for positives against negatives, and
how many of the known false negatives (caption duplicates) its beta rule drops.

Pure functions over scores; ``judge_quality_of_run`` reads a mining run's judge stage
(in a worker: the driver gets only the numbers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U / n_pos n_neg)."""
    if not positives or not negatives:
        return None
    scores = np.concatenate([positives, negatives])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties, so a tie is worth half.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def judge_quality(rows: list[dict], beta: float) -> dict:
    """``rows``: per query, ``positive_score``, ``candidate_scores`` (None: the pair failed)
    and ``candidate_positive`` (the labels say the candidate answers the query too).

    Positives are the gold pairs and the labelled duplicates; a duplicate is detected when
    the beta rule drops it (s_c > s_pos - beta), as mining would."""
    positives, negatives = [], []
    duplicates = dropped = dropped_duplicates = correct = judged = 0
    for row in rows:
        s_pos = row["positive_score"]
        if s_pos is None:
            continue
        positives.append(s_pos)
        judged += 1
        correct += s_pos > 0.5
        for score, is_positive in zip(row["candidate_scores"], row["candidate_positive"]):
            if score is None:
                continue
            (positives if is_positive else negatives).append(score)
            judged += 1
            correct += (score > 0.5) == is_positive
            drop = score > s_pos - beta
            duplicates += is_positive
            dropped += drop
            dropped_duplicates += drop and is_positive
    return {
        "auc": auc(positives, negatives),
        "accuracy_at_0.5": correct / judged if judged else None,
        "pairs": judged, "positive_pairs": len(positives), "negative_pairs": len(negatives),
        "false_negatives_labelled": duplicates,
        "false_negative_recall": dropped_duplicates / duplicates if duplicates else None,
        "dropped": dropped,
        "dropped_precision": dropped_duplicates / dropped if dropped else None,
        "beta": beta,
    }


def _read_rows(path: str | Path, columns: list[str]) -> list[dict]:
    """A table's rows (a file or a directory of shards), these columns only."""
    import pyarrow.parquet as pq

    from unime_ray.dataplane.io import parquet_files

    return [row for file in parquet_files(path) for row in pq.read_table(file, columns=columns).to_pylist()]


def judge_quality_of_run(scores_dir: str | Path, labels_path: str, beta: float) -> dict:
    """``judge_quality`` of a mining run's judge stage (``stages/judge/scores``) against labels."""
    from unime_ray.mining.label_judge import read_labels

    labels = read_labels(labels_path)
    rows = _read_rows(scores_dir, ["target_ids", "positive_score", "candidate_scores"])
    for row in rows:
        wanted = labels.get(row["target_ids"][0], row["target_ids"][0])
        row["candidate_positive"] = [labels.get(t, t) == wanted for t in row["target_ids"][1:]]
    return judge_quality(rows, beta)


def soft_label_mass(positive_score: float, negative_scores: list[float], temperature: float) -> float:
    """The soft-label target's probability on the positive: softmax(s / tau)[0]."""
    scores = np.array([positive_score, *negative_scores]) / temperature
    weights = np.exp(scores - scores.max())
    return float(weights[0] / weights.sum())


def records_profile(records: list[dict], num_negatives: int, temperature: float,
                    labels: dict[str, str] | None = None) -> dict:
    """What the embedder trains on, from mined records (``positive_id``, ``neg_ids``,
    ``query_pos_score``, ``neg_scores``): the soft-label target's mass on the positive, the
    share of negatives of the positive's kind (the id's prefix: ``img:``, ``cap:``...),
    which are the ones an evaluation's candidate lists hold, and with ``labels`` the share
    that are false negatives (the positive's label; an unlabelled target is its own)."""
    masses, same_kind, false_negatives = [], [], []
    for r in records:
        negatives = r["neg_scores"][:num_negatives]
        masses.append(soft_label_mass(r["query_pos_score"], negatives, temperature))
        kind = r["positive_id"].split(":", 1)[0]
        same_kind.append(np.mean([n.split(":", 1)[0] == kind for n in r["neg_ids"][:num_negatives]]))
        if labels is not None:
            wanted = labels.get(r["positive_id"], r["positive_id"])
            false_negatives.append(np.mean([labels.get(n, n) == wanted for n in r["neg_ids"][:num_negatives]]))
    profile = {"soft_label_positive_mass_mean": float(np.mean(masses)),
               "soft_label_positive_mass_median": float(np.median(masses)),
               "negatives_of_the_positives_kind": float(np.mean(same_kind)), "records": len(records)}
    if labels is not None:
        profile["false_negatives_by_label"] = float(np.mean(false_negatives))
    return profile


def records_profile_of_run(mined: str | Path, num_negatives: int, temperature: float,
                           labels_path: str | None = None) -> dict:
    """``records_profile`` of a mining run's records (``mined.parquet``)."""
    from unime_ray.mining.label_judge import read_labels

    records = _read_rows(mined, ["positive_id", "neg_ids", "query_pos_score", "neg_scores"])
    return records_profile(records, num_negatives, temperature, read_labels(labels_path) if labels_path else None)
