"""Seeded draws that every worker and every rerun reproduce."""

from __future__ import annotations

import hashlib

import numpy as np


def seeded_rng(key: str, seed: int) -> np.random.Generator:
    """A generator fixed by (key, seed), so reruns and other workers draw the same."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
