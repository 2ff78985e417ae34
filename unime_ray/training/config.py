"""Training configs: the sections every trainer shares, and each training job's config."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from unime_ray.config import StrictModel
from unime_ray.models.settings import EmbeddingChanges, EngineSettings, PixelBudget
from unime_ray.training.lora import LoraSettings
from unime_ray.training.records import RECORD_COLUMNS


class DataSettings(StrictModel):
    mined: str = Field("out/mine/mined.parquet",
                       description="mined records: the mining job's mined.parquet (a directory of shards, or a file)")
    image_root: str | None = Field(None, description="root of the records' image paths; default: the mining output dir")
    shuffle: Literal["global", "local"] = Field(
        "global", description="global: a seeded Ray Data random_shuffle before the workers' split, so batches mix "
                              "tasks; local: only each worker's shuffle buffer")
    datasets: list[str] | None = Field(
        None, min_length=1, description="train on the records of these datasets only (e.g. one meta-task, for "
                                        "model merging); None: all")


class ScalingSettings(StrictModel):
    num_workers: int = Field(2, ge=1, description="data-parallel training workers")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    backend: Literal["gloo", "nccl"] | None = Field(None, description="process group; default nccl on GPUs, else gloo")


class OptimSettings(StrictModel):
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(200, ge=0, description="linear warm-up, then linear decay to 0")
    max_steps: int = Field(2000, ge=1, description="optimizer steps (the paper: 2,000)")
    grad_clip: float | None = Field(1.0, description="max gradient norm; None turns clipping off")


class CheckpointSettings(StrictModel):
    every_steps: int = Field(100, ge=1, description="report a checkpoint every N steps (and at the end)")
    num_to_keep: int = Field(2, ge=1, description="best checkpoints kept, by training loss")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the latest checkpoint")
    report_every_steps: int = Field(
        50, ge=1, description="metrics to Ray Train every N steps (every step still goes to metrics.jsonl); its "
                              "controller takes one report per poll (2 s), so reporting every step paces training")


class TrainJobConfig(EmbeddingChanges, PixelBudget):
    """What every trainer's job takes: model, data, optimizer, scaling, checkpoints, export."""

    RECORD_COLUMNS: ClassVar[list[str]] = RECORD_COLUMNS  # the columns its records are read with

    output_dir: str = Field("out/train", description="Ray Train storage, logs and the exported model")
    run_name: str = Field("train", description="Ray Train run name; a rerun with the same name resumes")
    model: str = Field(".cache/checkpoints/embedder", description="backbone checkpoint: local dir or hub id")
    device: str = Field("cpu", description="'cpu' or 'cuda' (with scaling.use_gpu)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    per_worker_batch_size: int = Field(8, ge=1, description="mined records per worker per step")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads per worker")
    seed: int = Field(0, description="seeds LoRA init (same on all workers), data order and dropout (per worker)")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="lora: adapters on the language model, the rest frozen (the paper); full: every weight "
                            "trains (a small model from scratch, as the replication's round 0)")
    lora: LoraSettings = LoraSettings()
    data: DataSettings = DataSettings()
    optim: OptimSettings = OptimSettings()
    scaling: ScalingSettings = ScalingSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    export: bool = Field(True, description="write the trained model to OUT/model (LoRA: merged into the base)")


class TrainEmbedderConfig(TrainJobConfig):
    output_dir: str = Field("out/train_embedder", description="Ray Train storage, logs and the exported model")
    run_name: str = Field("embedder", description="Ray Train run name; a rerun with the same name resumes")
    loss: Literal["soft_label", "info_nce"] = Field("soft_label", description="UniME-V2, or VLM2Vec's InfoNCE baseline")
    temperature: float = Field(0.02, gt=0, description="tau of both losses")
    soft_label_log: Literal["exact", "public"] = Field(
        "exact", description="soft_label: exact log-softmaxes, or UniME-V2's public form log(softmax + 1e-8)")
    num_negatives: int = Field(8, ge=0, description="mined negatives per query (soft_label; info_nce with hard_negatives)")
    info_nce_hard_negatives: bool = Field(False, description="info_nce: add each query's mined negatives")
    gradcache_chunk_size: int | None = Field(None, ge=1, description="encode in chunks of N items (GradCache); None: one pass")
    dedup_candidates: bool = Field(True, description="encode a candidate repeated within a batch once")

    @model_validator(mode="after")
    def _loss_needs(self):
        if self.loss == "soft_label" and self.num_negatives < 1:
            raise ValueError("soft_label needs num_negatives >= 1")
        return self

    @property
    def negatives_needed(self) -> int:
        return self.num_negatives if self.loss == "soft_label" or self.info_nce_hard_negatives else 0


class GenerativeJobConfig(TrainJobConfig):
    """A trainer of the language model's head (the reranker, pretraining): it reads answers
    causally, as the judge does, so the embedder's pooling and attention do not apply."""

    @model_validator(mode="after")
    def _no_embedding_changes(self):
        if self.pooling is not None or self.bidirectional is not None:
            raise ValueError("pooling and bidirectional are an embedder's: this trainer reads answers from the "
                             "language model's head, causally, as the judge does")
        return self


class TrainRerankerConfig(GenerativeJobConfig):
    """METHOD.md section 5: the paper trains Qwen2.5-VL-7B, lr 2e-5, 1 epoch."""

    FORMAT_KIND: ClassVar[Literal["input", "prompt"]] = "prompt"  # ``format`` names the reranker's prompts

    output_dir: str = Field("out/train_reranker", description="Ray Train storage, logs and the exported model")
    run_name: str = Field("reranker", description="Ray Train run name; a rerun with the same name resumes")
    model: str = Field(".cache/checkpoints/reranker", description="base MLLM checkpoint: local dir or hub id")
    list_size: int = Field(6, ge=2, description="listwise candidates per prompt: the positive and list_size - 1 negatives")
    list_weight: float = Field(1.0, ge=0, description="w in L_pair + w * L_list")
    micro_batch_size: int | None = Field(None, ge=1, description="sequences per forward/backward (same gradient); "
                                                                 "None: one pass per kind")
    lora: LoraSettings = LoraSettings(r=128, alpha=256, dropout=0.05, dora=False)
    # Trained at the resolution it judges and reranks at.
    max_pixels: int | None = EngineSettings.model_fields["max_pixels"]
    optim: OptimSettings = OptimSettings(lr=2e-5, warmup_steps=0, max_steps=1000)

    @property
    def negatives_needed(self) -> int:
        return self.list_size - 1


class PretrainConfig(GenerativeJobConfig):
    """A base MLLM trained generatively: next-token loss on the answers of instruction turns
    (``unime_ray.data.instructions``), every weight from its random initialisation."""

    RECORD_COLUMNS: ClassVar[list[str]] = ["query_id", "kind", "parts", "answer"]

    output_dir: str = Field("out/pretrain", description="Ray Train storage, logs and the exported model")
    run_name: str = Field("pretrain", description="Ray Train run name; a rerun with the same name resumes")
    model: str = Field(".cache/checkpoints/embedder", description="the checkpoint to train: a random-weight tiny model")
    finetune: Literal["lora", "full"] = Field("full", description="full: every weight (pretraining); lora: adapters")
    micro_batch_size: int | None = Field(None, ge=1, description="turns per forward/backward (same gradient)")
    data: DataSettings = DataSettings(mined="out/instructions/instructions.parquet")
    negatives_needed: ClassVar[int] = 0
