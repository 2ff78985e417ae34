"""Training records: the global per-epoch shuffle mixes tasks and stays reproducible."""

import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from batch_mixing import mixed_fraction  # noqa: E402 - the benchmark's own measure


@pytest.fixture
def sorted_records(tmp_path):
    """4 datasets x 128 records, dataset after dataset (as a corpus often is), in 2 shards."""
    from unime_ray.training.records import RECORD_COLUMNS

    rows = [{"query_id": f"{d}:{i:03d}", "dataset": d} for d in "abcd" for i in range(128)]
    table = pa.Table.from_pylist(rows)
    for column in RECORD_COLUMNS:
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, pa.string()))
    (tmp_path / "mined.parquet").mkdir()
    for shard in range(2):
        pq.write_table(table.slice(256 * shard, 256), tmp_path / "mined.parquet" / f"{shard}.parquet")
    return str(tmp_path / "mined.parquet")


def _config(mined: str, shuffle: str, datasets=None):
    from unime_ray.training.config import TrainEmbedderConfig

    return TrainEmbedderConfig.model_validate({"data": {"mined": mined, "shuffle": shuffle, "datasets": datasets}})


def test_global_shuffle_mixes_tasks_across_the_whole_set(local_ray, sorted_records):
    from unime_ray.training.job import records_dataset

    def datasets_in_first_rows(shuffle: str) -> set[str]:
        rows = records_dataset(_config(sorted_records, shuffle)).take(64)
        return {r["query_id"].split(":")[0] for r in rows}

    # Without it, the first 64 records all come from the first dataset; with it, from all four.
    assert datasets_in_first_rows("local") == {"a"}
    assert datasets_in_first_rows("global") == set("abcd")
    fraction = mixed_fraction(records_dataset(_config(sorted_records, "global")), workers=2, batch_size=4, seed=0)
    assert fraction >= 0.8  # batches as the workers see them mix tasks


def test_global_order_is_reproducible_and_epochs_differ(local_ray, sorted_records):
    from unime_ray.training.job import records_dataset
    from unime_ray.training.records import record_batches

    def ids(seed: int) -> list[list[str]]:
        stream = record_batches(records_dataset(_config(sorted_records, "global")).iterator(), 8, seed)
        return [[r["query_id"] for r in next(stream)] for _ in range(128)]  # two epochs of 64 batches

    first, again = ids(0), ids(0)
    assert first == again  # same seed, same batches: a resumed run skips to the same position
    assert first[:64] != first[64:]  # a new epoch, a new order
    assert sorted(i for batch in first[:64] for i in batch) == sorted(i for batch in first[64:] for i in batch)
    skipped = record_batches(records_dataset(_config(sorted_records, "global")).iterator(), 8, 0)
    for _ in range(20):
        next(skipped)
    assert [[r["query_id"] for r in next(skipped)] for _ in range(108)] == first[20:]


def test_training_can_keep_some_datasets_only(local_ray, sorted_records):
    from unime_ray.training.job import records_dataset
    from unime_ray.training.records import RECORD_COLUMNS

    rows = records_dataset(_config(sorted_records, "global", ["b", "d"])).take_all()
    assert len(rows) == 256 and {r["query_id"].split(":")[0] for r in rows} == {"b", "d"}
    assert set(rows[0]) == set(RECORD_COLUMNS)  # the trainers' columns, as without the filter
