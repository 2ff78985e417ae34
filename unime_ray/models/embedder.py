"""Embeddings: the last hidden state pooled and normalised as the checkpoint's input format
says (``formats.InputFormat``; VLM2Vec and UniME-V2: the last token, L2-normalised)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from unime_ray.models.formats import DEFAULT_INPUT_FORMAT, InputFormat, Pooling, resolve_input_format
from unime_ray.models.inputs import Item, encode
from unime_ray.models.loading import backbone, load_model, load_processor
from unime_ray.models.pooling import (LATENT_FILE, attach_latent_pool, latent_pool_of, load_latent_pool,
                                      make_bidirectional, pool)


def pooled_hidden(model, batch, pooling: Pooling = "last", latent_pool=None) -> torch.Tensor:
    """[B, H] pooled last hidden state of a tokenized batch (the judge: its last token)."""
    hidden = backbone(model)(**batch).last_hidden_state  # [B, T, H]
    return pool(hidden, batch["attention_mask"], pooling, latent_pool)


def prepare_model(model, fmt: InputFormat, model_dir: str | Path, train: bool = False) -> None:
    """Make ``model`` read as ``fmt`` says: bidirectional attention, and the latent-attention
    layer saved in ``model_dir`` (training from a directory without one: a new layer)."""
    if fmt.bidirectional:
        make_bidirectional(model)
    if fmt.pooling == "latent_attention":
        if train and not (Path(model_dir) / LATENT_FILE).is_file():
            attach_latent_pool(model, fmt.latents, fmt.latent_heads)
        else:
            load_latent_pool(model, model_dir, fmt.latents, fmt.latent_heads)


class Embedder:
    """Embeds items with a multimodal LLM: the format's input -> pooled (normalised) vector.

    ``model`` is ready for the format: made bidirectional, and holding its latent-attention
    layer, if the format says so (``from_pretrained`` and the trainer prepare it)."""

    def __init__(self, processor, model, device: str = "cpu", input_format: InputFormat = DEFAULT_INPUT_FORMAT):
        self.processor = processor
        self.model = model
        self.device = device
        self.format = input_format
        self.latent_pool = latent_pool_of(model) if input_format.pooling == "latent_attention" else None

    @classmethod
    def from_pretrained(cls, model_path: str, device: str = "cpu", dtype: str = "float32",
                        min_pixels: int | None = None, max_pixels: int | None = None,
                        format: str | None = None, pooling: Pooling | None = None,
                        bidirectional: bool | None = None) -> "Embedder":
        """``format``: an input format's name, ``pooling`` and ``bidirectional`` changes to
        it; None resolves each from the checkpoint."""
        fmt = resolve_input_format(model_path, format, pooling, bidirectional)
        model = load_model(model_path, device, dtype)
        prepare_model(model, fmt, model_path)
        return cls(load_processor(model_path, min_pixels, max_pixels), model, device, fmt)

    def prompts(self, items: Sequence[Item]) -> list[str]:
        return [self.format.text(self.processor, item) for item in items]

    def encode(self, items: Sequence[Item]) -> torch.Tensor:
        """[N, H] embeddings, differentiable (training uses this)."""
        items = [self.format.prepare(item) for item in items]
        batch = encode(self.processor, self.prompts(items), [i.images() for i in items], self.device,
                       add_special_tokens=self.format.add_special_tokens)
        vectors = pooled_hidden(self.model, batch, self.format.pooling, self.latent_pool).float()
        return torch.nn.functional.normalize(vectors, dim=-1) if self.format.normalize else vectors

    @torch.no_grad()
    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """[N, H] float32 numpy embeddings."""
        return self.encode(items).cpu().numpy().astype(np.float32)
