"""Model inputs from (instruction, text, image): items, chat messages, batches.

Messages use the Hugging Face content-list form (``{"type": "image"}``,
``{"type": "text"}``), which Qwen2-VL, Qwen2.5-VL and LLaVA(-OneVision) processors all
render with their own chat templates and image tokens. How a given checkpoint reads an
item (chat or raw text, pooling) is its input format (``unime_ray.models.formats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from unime_ray.data.images import DEFAULT_MAX_PIXELS, load_image


@dataclass
class Item:
    """One query or candidate: any of instruction, text and image."""

    instruction: str = ""
    text: str = ""
    image: Image.Image | None = None

    def content(self) -> list[dict]:
        parts: list[dict] = [{"type": "image"}] if self.image is not None else []
        joined = join_text(self.instruction, self.text)
        if joined:
            parts.append({"type": "text", "text": joined})
        return parts

    def images(self) -> list[Image.Image]:
        return [self.image] if self.image is not None else []


def fit_image(image_processor, image: Image.Image) -> Image.Image:
    """``image`` resized exactly as ``image_processor`` will resize it (Qwen2-VL family: to
    multiples of the merged patch within its min/max pixels, by its own resize), so that
    the engine's processor finds it already at size and its resize is a no-op. Done in a
    CPU stage, this keeps the resize of large images off the accelerator's actor.
    Processors without that resize are left to resize at the engine."""
    if image_processor is None or not hasattr(image_processor, "merge_size"):
        return image
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    resized = image_processor.resize(pixels, image_processor.size, image_processor.resample,
                                     image_processor.patch_size * image_processor.merge_size)
    return Image.fromarray(resized[0].permute(1, 2, 0).numpy())


def fit_item(image_processor, item: "Item") -> "Item":
    """``item`` with its image fitted to the processor's pixel budget (``fit_image``)."""
    if item.image is None:
        return item
    return Item(item.instruction, item.text, fit_image(image_processor, item.image))


def load_item(instruction: str | None, text: str | None, image_ref: str | None, image_root: str | None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Item:
    """An item whose image is a path under ``image_root`` ("" or None: no image); raises
    ``ImageError`` on an unreadable image."""
    return Item(instruction or "", text or "", load_image(None, image_ref or None, image_root, max_pixels))


def join_text(instruction: str | None, text: str | None) -> str:
    """The instruction then the text, as MMEB writes them ("Represent ...: what ...")."""
    return " ".join(part for part in ((instruction or "").strip(), (text or "").strip()) if part)


def user_turn(content: list[dict]) -> list[dict]:
    return [{"role": "user", "content": content}]


def render(processor, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt string the model sees (the same string goes to vLLM and transformers)."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(processor, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], device="cpu",
           add_special_tokens: bool = True):
    """Tokenize prompts with their images (in order of appearance) into a padded batch;
    ``add_special_tokens``: the tokenizer's own BOS/EOS (a raw-text format's; chat
    templates write theirs)."""
    flat = [image for per_prompt in images for image in per_prompt]
    batch = processor(text=list(prompts), images=flat or None, padding=True, return_tensors="pt",
                      add_special_tokens=add_special_tokens)
    return batch.to(device)
