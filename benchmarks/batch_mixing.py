"""How many training batches mix two or more datasets, before and after the global shuffle.

    python benchmarks/batch_mixing.py

Records like the demo's (120 easy-VQA queries over 40 images, three datasets), sorted by
query id as the driver-bound mining job wrote them, split over 2 workers as Ray Train
splits them, in batches of 4 per worker (configs/train_embedder.yaml), one epoch.
Writes benchmarks/results/batch_mixing.json.
"""

from __future__ import annotations

import threading

from reporting import REPO, setup_logging, write_result


def demo_records(path) -> None:
    import pyarrow.parquet as pq

    from unime_ray.data.easyvqa import build_easyvqa_corpus
    from unime_ray.training.records import RECORD_COLUMNS

    queries = build_easyvqa_corpus(40, 0).queries.sort_by("id")
    table = queries.select(["id"]).rename_columns(["query_id"])
    for column in RECORD_COLUMNS:
        if column not in table.column_names:
            table = table.append_column(column, [[None] * table.num_rows])
    pq.write_table(table, path)


def mixed_fraction(dataset, workers: int, batch_size: int, seed: int, shuffle_buffer: int = 1024) -> float:
    """Fraction of the workers' first-epoch batches that hold two or more datasets (a query
    id's prefix names its dataset: "vqa:12", the columns training reads have no other)."""
    from unime_ray.training.records import record_batches

    batches: list[list[dict]] = []

    def consume(shard) -> None:
        stream = record_batches(shard, batch_size, seed, shuffle_buffer)
        per_epoch = shard_rows[0] // (workers * batch_size)
        batches.extend(next(stream) for _ in range(per_epoch))

    shard_rows = [dataset.count()]
    threads = [threading.Thread(target=consume, args=(shard,)) for shard in dataset.streaming_split(workers, equal=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(len({r["query_id"].split(":")[0] for r in batch}) > 1 for batch in batches) / len(batches)


def main() -> None:
    import ray
    import ray.data

    from unime_ray.training.config import TrainEmbedderConfig
    from unime_ray.training.job import records_dataset

    setup_logging()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    path = REPO / "out/bench/batch_mixing.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    demo_records(path)
    result = {}
    for shuffle in ("local", "global"):
        cfg = TrainEmbedderConfig.model_validate({"data": {"mined": str(path), "shuffle": shuffle}})
        # Several blocks, as a written directory of shards reads; the order within them is kept.
        result[shuffle] = round(mixed_fraction(records_dataset(cfg).repartition(8), 2, 4, cfg.seed), 3)
    write_result({"records": 120, "workers": 2, "per_worker_batch_size": 4,
                  "fraction_of_batches_with_two_or_more_datasets": result},
                 str(REPO / "benchmarks/results/batch_mixing.json"))


if __name__ == "__main__":
    main()
