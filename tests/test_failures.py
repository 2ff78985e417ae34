"""Infrastructure failures inside a real Ray Data actor pool: the actor is restarted and
the batch retried there, never turned into rejected rows."""

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from unime_ray.dataplane.stages import ActorStage
from unime_ray.mining.config import JudgeConfig
from unime_ray.mining.judge_stage import JudgeUDF, judge_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Workers import this module's UDF classes from here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


class JudgeThatRunsOutOfMemoryOnce(JudgeUDF):
    """The real judge, whose engine raises CUDA's OOM on the first batch any actor scores."""

    def __init__(self, marks: str, **kwargs):
        super().__init__(**kwargs)
        self.marks = Path(marks)
        with open(self.marks / "starts", "a") as starts:
            starts.write("x")
        score = self.judge.score_prepared

        async def score_or_fail(prepared):
            try:
                (self.marks / "failed").touch(exist_ok=False)
            except FileExistsError:
                return await score(prepared)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        self.judge.score_prepared = score_or_fail


def test_an_engine_error_restarts_the_actor_and_retries_the_batch(local_ray, checkpoints, tmp_path):
    import ray.data

    rows = [{"id": f"q{i}", "instruction": None, "text": f"shape {i}", "image": None, "image_path": None,
             "target_ids": ["t"], "target_instructions": [None], "target_texts": ["a red square"],
             "target_images": [None], "target_image_paths": [None], "target_found": [True]} for i in range(6)]
    config = JudgeConfig(backend="transformers", model=checkpoints["judge"], num_cpus=0.5, batch_size=2,
                         prep_num_cpus=0.25)
    assert ActorStage.from_config(config).map_batches_kwargs()["max_restarts"] == 8
    judged = judge_dataset(ray.data.from_arrow(pa.Table.from_pylist(rows)), config, None, 1 << 24,
                           JudgeThatRunsOutOfMemoryOnce, {"marks": str(tmp_path)}).take_all()
    assert (tmp_path / "failed").exists()  # the failure did happen
    assert (tmp_path / "starts").read_text() == "xx"  # on one actor, then on its restart
    assert sorted(r["id"] for r in judged) == [f"q{i}" for i in range(6)]  # nothing lost or duplicated
    assert all(r["error"] is None and 0 < r["positive_score"] < 1 for r in judged)  # the batch was retried, not rejected


class PlacementReport:
    """Reports the placement group its actor runs in."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        group = ray.util.get_current_placement_group()
        bundles = len(group.bundle_specs) if group else 0
        return batch.append_column("bundles", pa.array([bundles] * batch.num_rows))


def test_a_tensor_parallel_engine_reserves_its_workers_through_a_placement_group(local_ray):
    import ray.data

    config = JudgeConfig(num_cpus=0.5, batch_size=2, engine_kwargs={"tensor_parallel_size": 2})
    kwargs = ActorStage.from_config(config).map_batches_kwargs()
    assert kwargs["num_gpus"] == 0 and kwargs["num_cpus"] == 0  # the bundles hold the resources
    rows = ray.data.from_items([{"x": i} for i in range(4)]).map_batches(PlacementReport, **kwargs).take_all()
    assert [r["bundles"] for r in rows] == [2] * 4  # one bundle per tensor-parallel worker
    assert ActorStage.from_config(JudgeConfig()).map_batches_kwargs()["num_cpus"] == 1.0  # TP 1: plain actor
