"""Our ``ray.util.metrics``: defined once here, used by every job and actor.

They reach the Ray dashboard's metrics view (and Prometheus/Grafana) as ``unime_*``.
Outside a Ray worker or driver (plain unit tests) the calls are no-ops.
"""

from __future__ import annotations

from functools import lru_cache

COUNTERS = {
    "rows_embedded": "Rows (queries and targets) embedded",
    "rows_rejected": "Input rows rejected, with a reason, into rejects.parquet",
    "pairs_judged": "(query, candidate) pairs scored by the judge",
    "judge_errors": "Judge pairs that failed and were skipped",
    "false_negatives_dropped": "Candidates dropped as false negatives by the selection rule",
    "negatives_kept": "Hard negatives written to mined records",
    "fallbacks_used": "Queries whose candidates were all dropped (random fallback)",
    "rerank_fallbacks": "Listwise reranker answers that named no candidate (embedder order kept)",
    "serve_requests_refused": "HTTP requests answered with a 4xx/5xx by our checks (auth, limits, bad input)",
}
_LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
HISTOGRAMS = {
    "judge_batch_seconds": ("Seconds per judge batch", [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120]),
    "embed_batch_seconds": ("Seconds per embedding batch", [0.05, 0.1, 0.5, 1, 2, 5, 10, 30]),
    **{f"serve_stage_seconds_{stage}": (f"Seconds a request waits for the {stage} stage", _LATENCY)
       for stage in ("embed", "search", "rerank")},
    "serve_embed_batch_seconds": ("Seconds per @serve.batch of the Embedder deployment", _LATENCY),
    "serve_rerank_batch_seconds": ("Seconds per @serve.batch of the Reranker deployment", _LATENCY),
}


GAUGES = {
    "mining_stage_seconds": ("Seconds the last run of a mining stage took", ("stage",)),
    "train_samples_per_second": ("Training throughput across workers, by training run", ("run",)),
    "judge_batches_in_flight": ("Judge batches one engine actor is scoring at once", ()),
}


def _ray_ready() -> bool:
    import ray

    return ray.is_initialized()


@lru_cache(maxsize=None)
def _counter(name: str):
    from ray.util.metrics import Counter

    return Counter(f"unime_{name}", description=COUNTERS[name])


@lru_cache(maxsize=None)
def _histogram(name: str):
    from ray.util.metrics import Histogram

    description, boundaries = HISTOGRAMS[name]
    return Histogram(f"unime_{name}", description=description, boundaries=boundaries)


@lru_cache(maxsize=None)
def _gauge(name: str):
    from ray.util.metrics import Gauge

    description, tag_keys = GAUGES[name]
    return Gauge(f"unime_{name}", description=description, tag_keys=tag_keys)


def inc(name: str, value: float = 1.0) -> None:
    if name not in COUNTERS:
        raise KeyError(f"unknown counter {name!r}")
    if value and _ray_ready():
        _counter(name).inc(value)


def observe(name: str, value: float) -> None:
    if name not in HISTOGRAMS:
        raise KeyError(f"unknown histogram {name!r}")
    if _ray_ready():
        _histogram(name).observe(value)


def set_gauge(name: str, value: float, tags: dict[str, str]) -> None:
    if name not in GAUGES:
        raise KeyError(f"unknown gauge {name!r}")
    if _ray_ready():
        _gauge(name).set(value, tags=tags)
