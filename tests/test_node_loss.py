"""Node loss on a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head that runs no work and two worker nodes of 2 logical CPUs: Ray Data's file listing
and read tasks take 1 CPU each, which must fit beside the preparation and model actor pools
wherever Ray places them). A worker node is killed while the mining job judges (on vLLM),
and while training runs; both finish, mining with the same records as an undisturbed run,
training from its last checkpoint."""

from __future__ import annotations

import json
import secrets
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BEFORE_JUDGE, K, mining_args

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from ray._private.authentication_test_utils import reset_auth_token_state

    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # this cluster's own token, as for the other heads
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    reset_auth_token_state()  # this process caches the token it saw first
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    monkeypatch.undo()
    reset_auth_token_state()


def _node_of_live_actor(name_part: str) -> str | None:
    """Node id of an alive actor whose class name contains ``name_part``."""
    import ray._private.state

    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE" and name_part in actor["ActorClassName"]:
            return actor["Address"]["NodeID"]
    return None


def _kill_node_running(cluster, workers, name_part: str, ready, timeout: float = 600) -> str:
    """Once ``ready()`` holds, remove (ungracefully) the worker node that runs an alive
    ``name_part`` actor, and add a fresh node in its place (as an autoscaler would)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        node_id = _node_of_live_actor(name_part) if ready() else None
        victim = next((w for w in workers if w.node_id == node_id), None)
        if victim is not None:
            cluster.remove_node(victim, allow_graceful=False)
            workers.remove(victim)
            workers.append(cluster.add_node(num_cpus=2))
            return node_id
        time.sleep(0.2)
    raise TimeoutError(f"no alive {name_part} actor on a worker node")


def test_mining_survives_a_lost_node(cluster, first_run, planted_corpus, checkpoints, tmp_path):
    """The session's mining run (the same command line, on the test head) is the undisturbed
    reference: the pipeline is deterministic, as the snapshot test shows. This run reuses
    its stages before the judge, and judges and selects on the multi-node cluster."""
    from unime_ray.config import parse_job_args
    from unime_ray.mining.config import MineConfig
    from unime_ray.mining.manifest import reuse_stages
    from unime_ray.mining.pipeline import run_mining

    cluster, workers = cluster
    disturbed = tmp_path / "disturbed"
    reuse_stages(first_run, disturbed, BEFORE_JUDGE)
    config = parse_job_args(MineConfig, mining_args(planted_corpus, checkpoints, disturbed))
    outcome: dict = {}

    def mine():
        try:
            outcome["summary"] = run_mining(config)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = error

    thread = threading.Thread(target=mine)
    thread.start()
    judging = lambda: (disturbed / "stages" / "judge.partial").exists()  # noqa: E731
    _kill_node_running(cluster, workers, "MapWorker", judging)
    assert not (disturbed / "stages" / "judge").exists()  # killed mid-judge, not after
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["pairs_restored"] == 0 and outcome["summary"]["pairs_judged_this_run"] > 0
    before = sorted(pq.read_table(first_run / "mined.parquet").to_pylist(), key=lambda r: r["query_id"])
    after = sorted(pq.read_table(disturbed / "mined.parquet").to_pylist(), key=lambda r: r["query_id"])
    assert len({r["query_id"] for r in after}) == len(after) == len(before) == planted_corpus["good_queries"]
    for a, b in zip(before, after):
        assert (a["query_id"], a["neg_ids"], a["used_fallback"]) == (b["query_id"], b["neg_ids"], b["used_fallback"])
        assert np.allclose(a["neg_scores"], b["neg_scores"], atol=1e-6)


def test_training_resumes_after_a_lost_node(cluster, first_run, checkpoints, tmp_path):
    import ray.data

    from unime_ray.training.config import TrainEmbedderConfig
    from unime_ray.training.embedder_loop import train_embedder_loop
    from unime_ray.training.runner import build_trainer

    cluster, workers = cluster
    out = tmp_path / "train"
    out.mkdir()
    mined = first_run / "mined.parquet"
    cfg = TrainEmbedderConfig.model_validate({
        "output_dir": str(out), "model": checkpoints["embedder"], "num_negatives": K, "per_worker_batch_size": 8,
        "data": {"mined": str(mined), "image_root": str(first_run)},
        "optim": {"lr": 0.001, "warmup_steps": 3, "max_steps": 20},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.25}, "checkpoint": {"every_steps": 5, "max_failures": 2},
        "export": False})
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = build_trainer(train_embedder_loop, cfg, ray.data.read_parquet(str(mined))).fit()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = error

    thread = threading.Thread(target=train)
    thread.start()

    def past_a_checkpoint() -> bool:
        log = out / "metrics.jsonl"
        return log.exists() and any(json.loads(line)["step"] >= 8 for line in log.read_text().splitlines())

    _kill_node_running(cluster, workers, "RayTrainWorker", past_a_checkpoint)
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["result"].metrics["step"] == 20
    assert outcome["result"].metrics["resumed_from_step"] >= 5  # from a checkpoint, not from scratch
    steps = {json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert steps == set(range(1, 21))
