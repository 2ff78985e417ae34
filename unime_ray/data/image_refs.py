"""Image references of written records (mined records, a serving index), relative to the
output directory, so that directory is self-contained and is its records' image root.

Corpus files are reached through ``corpus_images``, a link to the corpus' image root;
bytes-only images are written once under ``images/``, named by content hash. Workers
call ``image_ref`` concurrently: each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

MINED_IMAGES = "images"
CORPUS_IMAGES = "corpus_images"


def link_image_root(output_dir: Path, corpus_image_root: str | None) -> None:
    """Point ``OUTPUT_DIR/corpus_images`` at the corpus' image root (the driver does it once)."""
    if not corpus_image_root:
        return
    link = output_dir / CORPUS_IMAGES
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(corpus_image_root).resolve(), target_is_directory=True)


def image_ref(output_dir: str, image: bytes | None, image_path: str | None) -> str:
    """The reference of one row's image ("" for none)."""
    if image is not None:
        name = hashlib.sha1(image).hexdigest() + ".img"
        path = Path(output_dir) / MINED_IMAGES / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{name}.{uuid.uuid4().hex}")
            tmp.write_bytes(image)
            os.replace(tmp, path)
        return f"{MINED_IMAGES}/{name}"
    if image_path:
        return f"{CORPUS_IMAGES}/{image_path}"
    return ""
