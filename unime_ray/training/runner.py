"""Driver side of a training job: the ``TorchTrainer`` from our config sections."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


def build_trainer(loop: Callable[[dict], None], config, dataset):
    """A Ray Train ``TorchTrainer`` for ``loop`` over ``dataset`` (shared as "train").

    ``config`` needs ``scaling``, ``checkpoint``, ``output_dir`` and ``run_name``; it is
    passed to every worker as a plain dict. Runs are stored under
    ``OUTPUT_DIR/ray_results/RUN_NAME``: resubmitting with the same name resumes there.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    import ray

    scaling = config.scaling
    backend = scaling.backend or ("nccl" if scaling.use_gpu else "gloo")
    spare = ray.cluster_resources().get("CPU", 0) - scaling.num_workers * scaling.cpus_per_worker
    if spare < 1:
        # Ray Data reads the records with tasks of its own; with no CPU left they wait forever.
        logger.warning("training workers reserve all but %.1f of the cluster's CPUs; Ray Data needs at least 1 "
                       "to read the records (lower scaling.cpus_per_worker or add nodes)", max(spare, 0))
    return TorchTrainer(
        loop,
        train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker,
                                                           **({"GPU": 1} if scaling.use_gpu else {})}),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=str((Path(config.output_dir) / "ray_results").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.num_to_keep,
                                               checkpoint_score_attribute="loss", checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=config.checkpoint.max_failures),
        ),
        torch_config=TorchConfig(backend=backend),
        datasets={"train": dataset},
    )


def latest_checkpoint_dir(result) -> Path:
    """Local directory of a finished run's latest checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError("the run reported no checkpoint")
    return Path(result.checkpoint.path)
