"""Judge pairs/s (vLLM vs transformers, same checkpoint and pairs) and embedding rows/s
with 1 vs 2 Ray Data actors. Writes JSON under benchmarks/results/.

    python benchmarks/judge_throughput.py [--pairs 1000] [--repeats 3] [--rows 2000]

Defaults use the demo checkpoints (``make checkpoints``) and the easy-VQA corpus.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

from reporting import REPO, setup_logging, write_result

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

logger = logging.getLogger("benchmarks.judge_throughput")


def judge_pairs(n_pairs: int):
    """Pairs grouped by query (as the mining job sends them): queries x 25 targets."""
    from unime_ray.data.easyvqa import build_easyvqa_corpus
    from unime_ray.dataplane.stages import row_item

    corpus = build_easyvqa_corpus(num_images=max(10, n_pairs // 25), seed=0)
    queries = [row_item(r, corpus.image_root, 1 << 24) for r in corpus.queries.to_pylist()]
    targets = [row_item(r, corpus.image_root, 1 << 24) for r in corpus.targets.to_pylist()]
    pairs = [(q, t) for q in queries for t in targets[:25]]
    return pairs[:n_pairs]


def time_judge(backend: str, model: str, pairs, repeats: int, **kwargs) -> dict:
    from unime_ray.models.engines.scoring import build_judge

    start = time.perf_counter()
    judge = build_judge(backend, model=model, **kwargs)
    load = time.perf_counter() - start
    judge.score(pairs[:8])  # warm-up: first batches pay one-off costs
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = judge.score(pairs)
        runs.append(time.perf_counter() - start)
        assert all(r.error is None for r in results)
    seconds = statistics.median(runs)
    if hasattr(judge, "close"):
        judge.close()
    return {"backend": backend, "pairs": len(pairs), "load_seconds": round(load, 2), "repeats": repeats,
            "median_seconds": round(seconds, 3), "pairs_per_second": round(len(pairs) / seconds, 1),
            "scores": [r.score for r in results]}


def time_embedding(model: str, rows: int, actors: int) -> dict:
    """Rows/s over the whole run (actor start-up included) and steady rows/s: the rows
    that arrive after the first batch, over the time from first to last batch."""
    import pyarrow as pa
    import ray.data

    from unime_ray.data.easyvqa import build_easyvqa_corpus
    from unime_ray.dataplane.config import EmbedConfig
    from unime_ray.dataplane.embed_stage import EmbedPrepUDF, embed_dataset

    corpus = build_easyvqa_corpus(num_images=100, seed=0)  # images and texts, as in mining
    table = corpus.queries.select(list(EmbedPrepUDF.INPUT_COLUMNS))
    table = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows)
    blocks = [table.slice(start, 64) for start in range(0, rows, 64)]  # enough blocks for every actor
    config = EmbedConfig(model=model, num_actors=actors, num_cpus=0.5, batch_size=16)
    ds = embed_dataset(ray.data.from_arrow(blocks), config, corpus.image_root, 1 << 24)
    start = time.perf_counter()
    first = last = None
    seen = after_first = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        last = time.perf_counter()
        if first is None:
            first = last
        else:
            after_first += batch.num_rows
        seen += batch.num_rows
    assert seen == rows
    total = last - start
    return {"actors": actors, "rows": rows, "seconds": round(total, 2),
            "seconds_to_first_batch": round(first - start, 2),
            "rows_per_second_including_start": round(rows / total, 1),
            "rows_per_second_steady": round(after_first / (last - first), 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default=str(REPO / ".cache/checkpoints/judge"))
    parser.add_argument("--embedder", default=str(REPO / ".cache/checkpoints/embedder"))
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/judge_throughput.json"))
    args = parser.parse_args(argv)
    setup_logging()

    pairs = judge_pairs(args.pairs)
    hf = time_judge("transformers", args.judge, pairs, args.repeats, batch_size=32)
    vl = time_judge("vllm", args.judge, pairs, args.repeats, max_model_len=1024,
                    engine_kwargs={"enforce_eager": True, "block_size": 32})
    max_diff = max(abs(a - b) for a, b in zip(hf.pop("scores"), vl.pop("scores")))

    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    embedding = [time_embedding(args.embedder, args.rows, n) for n in (1, 2)]
    ray.shutdown()

    return write_result({"judge": {"transformers": hf, "vllm": vl, "max_abs_score_difference": max_diff},
                         "embedding": embedding}, args.out)


if __name__ == "__main__":  # vLLM spawns processes
    main()
