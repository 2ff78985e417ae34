"""Embeddings: the last hidden state pooled and normalised as the checkpoint's input format
says (``formats.InputFormat``; VLM2Vec and UniME-V2: the last token, L2-normalised)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from unime_ray.models.formats import DEFAULT_INPUT_FORMAT, InputFormat, Pooling, resolve_input_format
from unime_ray.models.inputs import Item, encode
from unime_ray.models.loading import backbone, load_model, load_processor


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding. [B, T] -> [B]."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] hidden states -> [B, H] at each row's last real token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the mean over each row's real tokens."""
    mask = attention_mask.to(hidden.dtype)[..., None]  # [B, T, 1]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    return last_token_pool(hidden, attention_mask)


def pooled_hidden(model, batch, pooling: Pooling = "last") -> torch.Tensor:
    """[B, H] pooled last hidden state of a tokenized batch (the judge: its last token)."""
    hidden = backbone(model)(**batch).last_hidden_state  # [B, T, H]
    return pool(hidden, batch["attention_mask"], pooling)


class Embedder:
    """Embeds items with a multimodal LLM: the format's input -> pooled (normalised) vector."""

    def __init__(self, processor, model, device: str = "cpu", input_format: InputFormat = DEFAULT_INPUT_FORMAT):
        self.processor = processor
        self.model = model
        self.device = device
        self.format = input_format

    @classmethod
    def from_pretrained(cls, model_path: str, device: str = "cpu", dtype: str = "float32",
                        min_pixels: int | None = None, max_pixels: int | None = None,
                        format: str | None = None) -> "Embedder":
        """``format``: an input format's name; None resolves it from the checkpoint."""
        return cls(load_processor(model_path, min_pixels, max_pixels), load_model(model_path, device, dtype), device,
                   resolve_input_format(model_path, format))

    def prompts(self, items: Sequence[Item]) -> list[str]:
        return [self.format.text(self.processor, item) for item in items]

    def encode(self, items: Sequence[Item]) -> torch.Tensor:
        """[N, H] embeddings, differentiable (training uses this)."""
        items = [self.format.prepare(item) for item in items]
        batch = encode(self.processor, self.prompts(items), [i.images() for i in items], self.device,
                       add_special_tokens=self.format.add_special_tokens)
        vectors = pooled_hidden(self.model, batch, self.format.pooling).float()
        return torch.nn.functional.normalize(vectors, dim=-1) if self.format.normalize else vectors

    @torch.no_grad()
    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """[N, H] float32 numpy embeddings."""
        return self.encode(items).cpu().numpy().astype(np.float32)
