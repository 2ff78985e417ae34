"""Paired bootstrap intervals for a difference of Precision@1 between two evaluated models.

The statistic is MMEB's overall: the mean over tasks of each task's Precision@1 (every
task weighs the same). A model evaluated with several seeds counts a query as the mean
of its seeds' hits. Each resample draws, for each model, its seeds with replacement
(seed variance) and, within each task, the queries with replacement, the same queries
for both models (the pairing: query difficulty cancels). ``paired_difference`` is pure;
``query_hits_of_runs`` reads evaluation outputs (in a worker: the driver gets numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

# task -> [seeds, queries] of 0/1 hits, the queries in the same order for both models
Hits = Mapping[str, np.ndarray]


def overall_difference(a: Hits, b: Hits) -> float:
    """Mean over tasks of (a's Precision@1 - b's), seeds averaged."""
    return float(np.mean([a[task].mean() - b[task].mean() for task in a]))


def paired_difference(a: Hits, b: Hits, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """a - b in points (x100), with its percentile bootstrap interval."""
    if sorted(a) != sorted(b):
        raise ValueError(f"the models were evaluated on different tasks: {sorted(a)} vs {sorted(b)}")
    for task in a:
        if a[task].shape[1] != b[task].shape[1] or a[task].shape[1] == 0:
            raise ValueError(f"task {task}: {a[task].shape[1]} and {b[task].shape[1]} paired queries")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        per_task = []
        for task in a:
            n = a[task].shape[1]
            queries = rng.integers(n, size=n)
            seeds_a = rng.integers(a[task].shape[0], size=a[task].shape[0])
            seeds_b = rng.integers(b[task].shape[0], size=b[task].shape[0])
            per_task.append(a[task][seeds_a][:, queries].mean() - b[task][seeds_b][:, queries].mean())
        draws[r] = np.mean(per_task)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"difference": 100 * overall_difference(a, b), "low": 100 * float(low), "high": 100 * float(high),
            "confidence": confidence, "resamples": resamples,
            "queries": int(sum(a[task].shape[1] for task in a))}


def _hits(eval_dir: str | Path, stage: str) -> dict[tuple[str, str], bool]:
    """(task, query id) -> the gold ranked first, for the queries an evaluation kept."""
    import pyarrow.parquet as pq

    from unime_ray.dataplane.io import parquet_files

    hits = {}
    for file in parquet_files(Path(eval_dir) / "stages" / stage):
        table = pq.read_table(file, columns=["task", "id", "rank"]).to_pydict()
        for task, query, rank in zip(table["task"], table["id"], table["rank"]):
            if rank is not None:
                hits[task, query] = rank == 0
    return hits


def paired_hits(a_runs: list[dict], b_runs: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two models' ``Hits`` from their seeds' (task, query id) -> hit maps, on the queries
    every seed of both kept (a query one of them rejected cannot be paired), in sorted order."""
    common = sorted(set.intersection(*(set(run) for run in [*a_runs, *b_runs])))
    keys: dict[str, list] = {}
    for task, query in common:
        keys.setdefault(task, []).append((task, query))
    as_hits = lambda runs: {task: np.array([[run[k] for k in ks] for run in runs], np.float64)  # noqa: E731
                            for task, ks in keys.items()}
    return as_hits(a_runs), as_hits(b_runs)


def paired_difference_of_runs(a_dirs: list[str], b_dirs: list[str], a_stage: str = "ranked",
                              b_stage: str = "ranked", resamples: int = 2000) -> dict:
    """``paired_difference`` of two models' evaluations (one directory per seed; ``stage``:
    ``ranked`` for the embedder's order, ``reranked`` for the reranker's over it)."""
    a, b = paired_hits([_hits(d, a_stage) for d in a_dirs], [_hits(d, b_stage) for d in b_dirs])
    return paired_difference(a, b, resamples=resamples)
