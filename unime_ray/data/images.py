"""Loading a row's image: from bytes or from a path that must stay under the image root."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

# Decompression bombs are a row error, not a crashed actor.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """A row's image is missing, unreadable or not allowed."""


def resolve_path(image_path: str, image_root: str | None) -> Path:
    """The file behind a relative ``image_path``; refuses paths that leave the root.

    The check is lexical (absolute paths and ``..`` escapes are refused), so symlinks
    inside a dataset's root, common in image datasets, keep working.
    """
    if image_root is None:
        raise ImageError(f"image path {image_path!r} given but the corpus has no image root")
    normal = os.path.normpath(image_path)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise ImageError(f"image path {image_path!r} escapes the image root")
    return Path(image_root) / normal


def load_image(
    image: bytes | None,
    image_path: str | None,
    image_root: str | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image | None:
    """Decode a row's image as RGB, or None if the row has no image."""
    if image is not None:
        source = io.BytesIO(image)
        where = "image bytes"
    elif image_path:
        path = resolve_path(image_path, image_root)
        if not path.is_file():
            raise ImageError(f"image file {image_path!r} not found under {image_root}")
        source = path
        where = f"image file {image_path!r}"
    else:
        return None
    try:
        with Image.open(source) as opened:
            if opened.width * opened.height > max_pixels:
                raise ImageError(f"{where} has {opened.width}x{opened.height} pixels, over the limit {max_pixels}")
            return opened.convert("RGB")
    except ImageError:
        raise
    except Exception as error:  # PIL raises many types for corrupt files
        raise ImageError(f"{where} cannot be decoded: {type(error).__name__}: {error}") from error
