"""LoRA (peft) on the language model of a multimodal backbone.

Adapters go on the language model's attention and MLP projections only: the regex
names ``language_model``, so vision towers that use the same projection names (LLaVA's
CLIP/SigLIP) stay frozen, and so does every non-adapter weight.
"""

from __future__ import annotations

import logging

from pydantic import Field

from unime_ray.config import StrictModel

logger = logging.getLogger(__name__)

LANGUAGE_MODEL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, description="rank")
    alpha: int = Field(64, ge=1, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter input")
    dora: bool = Field(True, description="weight-decomposed LoRA (DoRA), as UniME-V2 trains")
    modules: list[str] = Field(list(LANGUAGE_MODEL_PROJECTIONS), description="projection names in the language model")


def target_regex(modules: list[str]) -> str:
    return rf".*language_model.*\.({'|'.join(modules)})"


def apply_lora(model, settings: LoraSettings, modules_to_save: list[str] | None = None):
    """Wrap ``model`` with trainable adapters; everything else is frozen, except the
    ``modules_to_save`` (trained whole, saved with the adapter: a latent-attention layer)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        use_dora=settings.dora, target_modules=target_regex(settings.modules),
                        modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%d dora=%s: %d of %d parameters trainable",
                settings.r, settings.alpha, settings.dora, trainable, total)
    return peft_model


