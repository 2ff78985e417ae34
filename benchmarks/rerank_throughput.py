"""Reranker throughput: training records/s with 2 Ray Train workers, and reranking
requests/s in both modes (listwise: one prompt per request; pointwise: top_n pairs per
request) on both engines. Writes JSON under benchmarks/results/.

    python benchmarks/rerank_throughput.py [--mined out/demo/mined.parquet] [--requests 40] [--top-n 5]

Needs mined records: `make demo` writes them to out/demo/ (and the trained reranker to
out/demo/rerank/model, which inference uses when present).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from reporting import DEMO_RECORDS, REPO, mined_records, setup_logging, write_result

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

logger = logging.getLogger("benchmarks.rerank_throughput")


def time_training(mined: Path, model: str, steps: int, batch: int) -> dict:
    import ray.data

    from unime_ray.training.config import TrainRerankerConfig
    from unime_ray.training.reranker_loop import train_reranker_loop
    from unime_ray.training.runner import build_trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainRerankerConfig.model_validate({
            "output_dir": out, "model": model, "per_worker_batch_size": batch,
            "data": {"mined": str(mined), "image_root": str(mined.parent)},
            "optim": {"max_steps": steps, "warmup_steps": 2},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
            "checkpoint": {"every_steps": steps}, "export": False,
        })
        build_trainer(train_reranker_loop, cfg, ray.data.read_parquet(str(mined))).fit()
        history = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steady = [h["samples_per_s"] for h in history[2:-1]]  # first steps warm up; the last checkpoints
    return {"workers": 2, "steps": steps, "per_worker_batch_size": batch, "sequences_per_record": 3,
            "records_per_second": round(statistics.median(steady), 2)}


def reranking_requests(mined: Path, count: int, top_n: int):
    import pyarrow.parquet as pq

    from unime_ray.training.records import negative_item, positive_item, query_item

    requests = []
    for i, record in enumerate(pq.read_table(mined).slice(0, count).to_pylist()):
        candidates = [negative_item(record, j, str(mined.parent)) for j in range(top_n - 1)]
        candidates.insert(i % top_n, positive_item(record, str(mined.parent)))
        requests.append((query_item(record, str(mined.parent)), candidates))
    return requests


def time_reranking(model: str, requests, top_n: int, repeats: int) -> list[dict]:
    from unime_ray.models.reranker import Reranker

    engines = {"transformers": {}, "vllm": {"max_model_len": 2048, "kv_cache_gib": 1,
                                            "engine_kwargs": {"enforce_eager": True, "block_size": 32}}}
    results = []
    for backend, kwargs in engines.items():
        loaded = time.perf_counter()
        reranker = Reranker.from_pretrained(model, backend=backend, mode="pointwise", top_n=top_n, **kwargs)
        load_seconds = time.perf_counter() - loaded
        for mode in ("listwise", "pointwise"):
            reranker.mode = mode  # one engine serves both modes
            reranker.rerank_batch(requests[:2])  # warm-up
            seconds, fallbacks = [], reranker.fallbacks
            for _ in range(repeats):
                start = time.perf_counter()
                rankings = reranker.rerank_batch(requests)
                seconds.append(time.perf_counter() - start)
            top1 = sum(r.order[0] == i % top_n for i, r in enumerate(rankings)) / len(rankings)
            results.append({"backend": backend, "mode": mode, "requests": len(requests), "top_n": top_n,
                            "requests_per_second": round(len(requests) / statistics.median(seconds), 1),
                            "fallback_rate": round((reranker.fallbacks - fallbacks) / (repeats * len(requests)), 3),
                            "positive_at_rank_1": round(top1, 3), "engine_load_seconds": round(load_seconds, 1)})
            logger.info("%s", results[-1])
        if backend == "vllm":
            reranker.engine.close()
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mined", default=str(DEMO_RECORDS))
    parser.add_argument("--base", default=str(REPO / ".cache/checkpoints/reranker"), help="model trained from")
    parser.add_argument("--trained", default=str(REPO / "out/demo/rerank/model"), help="model reranking")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2, help="records per worker per step")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/rerank_throughput.json"))
    args = parser.parse_args(argv)
    setup_logging()
    mined = mined_records(args.mined)
    model = args.trained if Path(args.trained).exists() else args.base
    reranking = time_reranking(model, reranking_requests(mined, args.requests, args.top_n), args.top_n, args.repeats)

    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    training = time_training(mined, args.base, args.steps, args.batch)
    ray.shutdown()
    return write_result({"reranking_model": model, "reranking": reranking, "training": training}, args.out)


if __name__ == "__main__":
    main()
