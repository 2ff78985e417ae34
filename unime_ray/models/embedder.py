"""Embeddings: last-token pooling of the last hidden state, L2-normalised (VLM2Vec/UniME)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from unime_ray.models.inputs import Item, encode, render, user_turn
from unime_ray.models.loading import backbone, load_model, load_processor


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding. [B, T] -> [B]."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H] hidden states -> [B, H] at each row's last real token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def last_hidden(model, batch) -> torch.Tensor:
    """[B, H] last-token hidden state of a tokenized batch."""
    hidden = backbone(model)(**batch).last_hidden_state  # [B, T, H]
    return last_token_pool(hidden, batch["attention_mask"])


class Embedder:
    """Embeds items with a multimodal LLM: prompt -> last token -> L2-normalised vector."""

    def __init__(self, processor, model, device: str = "cpu"):
        self.processor = processor
        self.model = model
        self.device = device

    @classmethod
    def from_pretrained(cls, model_path: str, device: str = "cpu", dtype: str = "float32",
                        min_pixels: int | None = None, max_pixels: int | None = None) -> "Embedder":
        return cls(load_processor(model_path, min_pixels, max_pixels), load_model(model_path, device, dtype), device)

    def prompts(self, items: Sequence[Item]) -> list[str]:
        return [render(self.processor, user_turn(item.content())) for item in items]

    def encode(self, items: Sequence[Item]) -> torch.Tensor:
        """[N, H] normalised embeddings, differentiable (training uses this)."""
        batch = encode(self.processor, self.prompts(items), [i.images() for i in items], self.device)
        return torch.nn.functional.normalize(last_hidden(self.model, batch).float(), dim=-1)

    @torch.no_grad()
    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """[N, H] float32 numpy embeddings."""
        return self.encode(items).cpu().numpy().astype(np.float32)
