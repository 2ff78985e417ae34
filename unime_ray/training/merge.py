"""Model merging: embedders fine-tuned from one base on different task mixes, made one model
(Qwen3-Embedding merges its checkpoints; "Tackling Task Conflict and Data Imbalance through
Model Merging" learns the merge weights on a small probe set: Self Positioning).

    python -m unime_ray.training.merge --output-dir OUT base=BASE 'models=[A, B]' method=linear

Each model is a trainer's export (``OUT/model``: LoRA merged, or every weight) or a peft
adapter directory; all share the base's architecture and input format. With task vectors
t_i = theta_i - theta_base:

- ``linear``: theta = sum_i w_i theta_i (the weights sum to 1);
- ``task_arithmetic``: theta = theta_base + sum_i w_i t_i (any weights);
- ``self_positioning``: the task-arithmetic weights, started at ``weights`` and then learnt
  by SGD on InfoNCE over a probe set of mined records held out from training.

The result is an ordinary model directory with the models' input-format record (and their
merged latent-attention layer, if they pool so): every job loads it like a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import Field, model_validator

from unime_ray.config import StrictModel, dump_config, parse_job_args

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class SelfPositioning(StrictModel):
    probe: str = Field(description="mined records (Parquet) held out from every merged model's training")
    image_root: str | None = Field(None, description="root of the probe records' images; default: their directory")
    steps: int = Field(50, ge=1, description="SGD steps on the merge weights")
    lr: float = Field(0.05, gt=0, description="learning rate of the merge weights (Adam)")
    batch_size: int = Field(8, ge=2, description="probe records per step (in-batch negatives)")
    temperature: float = Field(0.02, gt=0, description="InfoNCE temperature")
    seed: int = Field(0, description="probe batches' order")


class MergeConfig(StrictModel):
    output_dir: str = Field("out/merged", description="the merged model directory")
    base: str = Field(description="the models' common base checkpoint")
    models: list[str] = Field(min_length=2, description="exported model directories or peft adapter directories")
    method: Literal["linear", "task_arithmetic"] = Field("linear", description="how the models combine")
    weights: list[float] | None = Field(None, description="one per model; default 1/n each")
    self_positioning: SelfPositioning | None = Field(
        None, description="learn the task-arithmetic weights on a probe set, starting from ``weights``")
    device: str = Field("cpu", description="'cpu' or 'cuda' (self positioning's forward passes)")

    @model_validator(mode="after")
    def _weights_fit(self):
        if self.weights is None:
            self.weights = [1 / len(self.models)] * len(self.models)
        if len(self.weights) != len(self.models):
            raise ValueError(f"{len(self.weights)} weights for {len(self.models)} models")
        if self.method == "linear" and not math.isclose(sum(self.weights), 1.0, abs_tol=1e-6):
            raise ValueError(f"linear merging needs weights that sum to 1, not {sum(self.weights)}; "
                             "use method=task_arithmetic for free weights")
        if self.self_positioning is not None and self.method != "task_arithmetic":
            raise ValueError("self_positioning learns task-arithmetic weights: set method=task_arithmetic")
        return self


# --- the arithmetic: pure functions on state dicts -------------------------------------------

def task_vectors(base: StateDict, models: Sequence[StateDict]) -> list[StateDict]:
    """theta_i - theta_base for every floating-point tensor; the others (integer buffers) must
    be equal in every model, and are not merged."""
    vectors = []
    for number, model in enumerate(models):
        if model.keys() != base.keys():
            missing, extra = sorted(base.keys() - model.keys()), sorted(model.keys() - base.keys())
            raise ValueError(f"model {number} does not have the base's tensors (missing {missing[:3]}, "
                             f"extra {extra[:3]}): models must share the base's architecture")
        vector = {}
        for name, tensor in model.items():
            if tensor.is_floating_point():
                vector[name] = tensor - base[name]
            elif not torch.equal(tensor, base[name]):
                raise ValueError(f"model {number}: the non-float tensor {name} differs from the base's")
        vectors.append(vector)
    return vectors


def combine(base: StateDict, vectors: Sequence[StateDict], weights: Sequence[float | torch.Tensor]) -> StateDict:
    """theta_base + sum_i w_i t_i (linear merging is this with weights summing to 1).
    Differentiable in ``weights`` when they are tensors (self positioning)."""
    merged = {}
    for name, tensor in base.items():
        if name in vectors[0]:
            merged[name] = tensor + sum(w * vector[name] for w, vector in zip(weights, vectors))
        else:
            merged[name] = tensor
    return merged


# --- models in and out -------------------------------------------------------------------------

def _load(path: str, base: str):
    """(model, input format) of an export, or of a peft adapter merged into ``base``."""
    from unime_ray.models.embedder import prepare_model
    from unime_ray.models.formats import resolve_input_format
    from unime_ray.models.loading import load_model

    if (Path(path) / "adapter_config.json").is_file():
        from peft import PeftModel

        fmt = resolve_input_format(base)  # an adapter records no format: it reads as its base does
        if fmt.pooling == "latent_attention":
            raise ValueError(f"{path}: an adapter's latent-attention layer merges from the trainer's export only")
        return PeftModel.from_pretrained(load_model(base), path).merge_and_unload(), fmt
    fmt = resolve_input_format(path)
    model = load_model(path)
    prepare_model(model, fmt, path)  # attaches its latent-attention layer, if it has one
    return model, fmt


def merge_models(cfg: MergeConfig) -> Path:
    """Merge ``cfg.models`` into ``cfg.output_dir``; returns it."""
    from unime_ray.models.embedder import prepare_model
    from unime_ray.models.formats import record_format, resolve_prompt_format
    from unime_ray.models.loading import load_model, load_processor
    from unime_ray.models.pooling import LATENT_FILE, LATENT_POOL, save_latent_pool

    loaded = [_load(path, cfg.base) for path in cfg.models]
    formats = {fmt for _, fmt in loaded}
    if len(formats) > 1:
        raise ValueError(f"the models read their inputs differently ({sorted(f.name for f in formats)} / pooling "
                         f"{sorted(f.pooling for f in formats)}): merge models trained with one input format")
    fmt = formats.pop()
    base = load_model(cfg.base)
    if fmt.pooling == "latent_attention" and cfg.method != "linear" and not (Path(cfg.base) / LATENT_FILE).is_file():
        raise ValueError("the models' latent-attention layers have no common base to take task vectors from: "
                         "use method=linear")
    # As the models read: bidirectional, and the base's latent-attention layer (or, for linear
    # merging, a placeholder that the weights summing to 1 cancel).
    prepare_model(base, fmt, cfg.base, train=True)
    base_state = {k: v.detach() for k, v in base.state_dict().items()}
    vectors = task_vectors(base_state, [{k: v.detach() for k, v in m.state_dict().items()} for m, _ in loaded])
    weights = list(cfg.weights)
    if cfg.self_positioning is not None:
        weights = self_position(base, base_state, vectors, weights, fmt, cfg.self_positioning, cfg.device)
    merged = combine(base_state, vectors, weights)
    base.load_state_dict(merged)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(base, LATENT_POOL):
        save_latent_pool(base, out)
    base.save_pretrained(out)
    load_processor(cfg.base).save_pretrained(out)
    record_format(out, fmt, resolve_prompt_format(cfg.base))
    report = {"method": cfg.method, "models": cfg.models, "weights": [float(w) for w in weights],
              "self_positioning": cfg.self_positioning is not None}
    (out / "merge.json").write_text(json.dumps(report, indent=1) + "\n")
    logger.info("merged %d models into %s with weights %s", len(cfg.models), out, report["weights"])
    return out


# --- self positioning --------------------------------------------------------------------------

def self_position(model, base: StateDict, vectors: list[StateDict], weights: list[float], fmt,
                  settings: SelfPositioning, device: str) -> list[float]:
    """The task-arithmetic weights after ``settings.steps`` Adam steps on InfoNCE over probe
    batches, the model's parameters being theta_base + sum_i w_i t_i (only the weights learn)."""
    import numpy as np
    import pyarrow.parquet as pq
    from tqdm import trange

    from unime_ray.models.embedder import Embedder
    from unime_ray.models.loading import load_processor
    from unime_ray.training.losses import info_nce_loss
    from unime_ray.training.records import RECORD_ERRORS, positive_item, query_item

    records = pq.read_table(settings.probe).to_pylist()  # a small held-out set, by definition
    image_root = settings.image_root or str(Path(settings.probe).parent)
    pairs = []
    for record in records:
        try:
            pairs.append((query_item(record, image_root), positive_item(record, image_root)))
        except RECORD_ERRORS as error:
            logger.warning("probe record %s left out: %s", record["query_id"], error)
    if len(pairs) < settings.batch_size:
        raise ValueError(f"{settings.probe}: {len(pairs)} usable probe records, fewer than a batch "
                         f"({settings.batch_size})")
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embedder = Embedder(load_processor(model.name_or_path), model, device, fmt)
    holder = _Encoder(embedder)
    lam = torch.tensor(weights, dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([lam], lr=settings.lr)
    base = {k: v.to(device) for k, v in base.items()}
    vectors = [{k: v.to(device) for k, v in vector.items()} for vector in vectors]
    rng = np.random.default_rng(settings.seed)
    # Each parameter once: a state dict lists tied weights (embeddings and LM head) under both names.
    names = {name for name, _ in holder.named_parameters()} | {name for name, _ in holder.named_buffers()}
    for step in trange(settings.steps, desc="self positioning"):
        batch = [pairs[i] for i in rng.choice(len(pairs), settings.batch_size, replace=False)]
        params = {f"embedder_model.{k}": v for k, v in combine(base, vectors, list(lam)).items()
                  if f"embedder_model.{k}" in names}
        queries, positives = torch.func.functional_call(holder, params, ([q for q, _ in batch], [p for _, p in batch]))
        loss = info_nce_loss(queries, positives, settings.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logger.info("self positioning step %d: probe loss %.4f, weights %s", step + 1, loss.item(),
                    [round(w, 4) for w in lam.detach().tolist()])
    return lam.detach().tolist()


class _Encoder(torch.nn.Module):
    """``Embedder.encode`` as a module whose parameters are the model's, so that
    ``torch.func.functional_call`` can run it on merged parameters."""

    def __init__(self, embedder):
        super().__init__()
        self.embedder = embedder
        self.embedder_model = embedder.model

    def forward(self, queries, positives):
        return self.embedder.encode(queries), self.embedder.encode(positives)


def main(argv=None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_job_args(MergeConfig, argv, description="merge embedders trained on different task mixes")
    logger.info("config:\n%s", dump_config(cfg))
    return merge_models(cfg)


if __name__ == "__main__":
    main()
