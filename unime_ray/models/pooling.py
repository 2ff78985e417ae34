"""How token states become one vector: last-token and mean pooling, NV-Embed's latent-attention
pooling (a trained layer), and NV-Embed's bidirectional attention in the language model.

The latent-attention layer is a submodule of the model it pools (``LATENT_POOL``), so the
trainers' optimizer, gradient averaging and checkpoints (peft's ``modules_to_save``, or every
weight) carry it like the adapters; an exported model directory holds it in ``LATENT_FILE``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unime_ray.models.formats import Pooling
LATENT_POOL = "latent_attention_pool"  # the layer's attribute on the Hugging Face model
LATENT_FILE = "latent_attention.safetensors"  # beside an exported model's weights


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


class LatentAttentionPooling(nn.Module):
    """NV-Embed's latent-attention layer: the token states (queries) attend to a trained
    latent array of ``latents`` x d (keys and values), then an MLP, each with a residual
    around it and a layer norm before it, then the mean over real tokens."""

    def __init__(self, hidden: int, latents: int = 512, heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, hidden) * hidden ** -0.5)
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] token states, [B, T] mask -> [B, H]."""
        x = hidden.to(self.latents.dtype)
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, r, H]
        attended, _ = self.attention(self.attention_norm(x), latents, latents, need_weights=False)
        x = x + attended
        x = x + self.mlp(self.mlp_norm(x))
        return mean_pool(x, attention_mask)


def hidden_size(model) -> int:
    config = model.config
    return getattr(config, "text_config", config).hidden_size


def attach_latent_pool(model, latents: int, heads: int) -> LatentAttentionPooling:
    """A new latent-attention layer as ``model``'s submodule (before peft wraps it), on the
    model's device, in float32."""
    device = next(model.parameters()).device
    layer = LatentAttentionPooling(hidden_size(model), latents, heads).to(device)
    setattr(model, LATENT_POOL, layer)
    return layer


def latent_pool_of(model) -> nn.Module:
    """The model's latent-attention layer (under peft: the wrapper that runs the trained copy)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == LATENT_POOL:
            return module
    raise ValueError(f"{type(model).__name__} has no {LATENT_POOL}: a latent-attention input format needs the "
                     f"trained layer ({LATENT_FILE} in the model directory)")


def save_latent_pool(model, model_dir: str | Path) -> None:
    """Move the layer out of a merged model into ``LATENT_FILE``, so that the directory's
    model weights stay the architecture's own."""
    from safetensors.torch import save_model

    layer = getattr(model, LATENT_POOL)
    delattr(model, LATENT_POOL)
    save_model(layer, str(Path(model_dir) / LATENT_FILE))


def load_latent_pool(model, model_dir: str | Path, latents: int, heads: int) -> LatentAttentionPooling:
    """Attach the layer saved in ``model_dir`` (by ``save_latent_pool``)."""
    from safetensors.torch import load_model

    path = Path(model_dir) / LATENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: its input format pools by latent attention but {LATENT_FILE} is missing")
    layer = attach_latent_pool(model, latents, heads)
    load_model(layer, str(path))
    return layer.eval()


def language_model(model):
    """The decoder stack of a multimodal model (under peft too)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.model.language_model


def _bidirectional_mask(module, args, kwargs):
    """Forward pre-hook of the language model: its 2D padding mask -> a full (bidirectional)
    mask in the attention implementation's form. The models' own mask builders return a
    4D mask as it is, so no layer adds causality back (flash attention keeps the 2D mask
    and reads ``is_causal``, which ``make_bidirectional`` turned off)."""
    from transformers.masking_utils import create_bidirectional_mask

    mask, embeds = kwargs.get("attention_mask"), kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = module.get_input_embeddings()(kwargs["input_ids"])
        kwargs["inputs_embeds"], kwargs["input_ids"] = embeds, None
    kwargs["attention_mask"] = create_bidirectional_mask(config=module.config, inputs_embeds=embeds,
                                                         attention_mask=mask, allow_is_bidirectional_skip=False)
    return args, kwargs


def make_bidirectional(model) -> None:
    """Every token attends to every real token in ``model``'s language model (NV-Embed's
    contrastive training): attention modules stop applying their causal mask, and the mask
    they get masks padding only. The vision tower is bidirectional already. Only this
    model instance changes: a judge or reranker loaded from the same checkpoint is causal."""
    lm = language_model(model)
    for module in lm.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    lm.register_forward_pre_hook(_bidirectional_mask, with_kwargs=True)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling,
         latent_pool: nn.Module | None = None) -> torch.Tensor:
    """[B, T, H] -> [B, H] by ``pooling`` (latent attention: by ``latent_pool``)."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "latent_attention":
        return latent_pool(hidden, attention_mask)
    return last_token_pool(hidden, attention_mask)
