"""One loading path for every Hugging Face multimodal checkpoint (local dir or hub id).

``AutoProcessor`` + ``AutoModelForImageTextToText`` cover Qwen2-VL, Qwen2.5-VL and
LLaVA(-OneVision); their ``.model`` is the backbone that yields hidden states and their
output embeddings give next-token logits, which is all the embedder and judge use.
Device and dtype are configuration: the same call loads Qwen2-VL-2B in bf16 on a GPU.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def pixel_budget(min_pixels: int | None, max_pixels: int | None) -> dict[str, int]:
    """The image processor's pixel bounds that are set (None: the checkpoint's own). The
    same keys go to Hugging Face processors and to vLLM's ``mm_processor_kwargs``; an image
    is resized (aspect kept) to fit, so its token count is bounded by ``max_pixels``."""
    return {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}


def load_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, **pixel_budget(min_pixels, max_pixels))
    # Pooling and scoring find the last real token from the mask, so either side works;
    # left padding keeps batched prompts aligned at the answer position.
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(path: str, device: str = "cpu", dtype: str = "float32"):
    """The model in eval mode on ``device``."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype(dtype))
    logger.info("loaded %s (%s) on %s as %s", path, type(model).__name__, device, dtype)
    return model.to(device).eval()


def backbone(model):
    """The part of a ``*ForConditionalGeneration`` model that returns hidden states.

    A peft wrapper is unwrapped first (its ``.model`` is one level too high); the
    adapters live inside the base model's modules, so they still apply.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.model


def set_torch_threads(threads: int | None) -> None:
    """Pin intra-op threads; several actors on one node must not oversubscribe cores."""
    if threads:
        import torch

        torch.set_num_threads(threads)
