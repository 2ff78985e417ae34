"""Shared fixtures: tiny checkpoints are built once per session (about 7 s each)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_RECORDS = REPO.parent / "shared" / "data" / "unime_v2_example_data.json"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from unime_ray.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {role: str(build_tiny_checkpoint(root / role, role)) for role in ("embedder", "judge")}


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()
