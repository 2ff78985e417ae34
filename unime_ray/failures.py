"""Batch calls that lose only the failing items.

Engines are called on whole batches for speed; when a batch fails, each item is retried
alone so that one bad row (an image the processor rejects, a prompt over the length
limit) is reported on its own and the others still get results.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def call_isolating_failures(fn: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T]) -> list[tuple[R | None, str | None]]:
    """``fn`` over ``items`` as one batch, falling back to one call per item on failure.

    Returns one (result, error) per item: exactly one of the two is None.
    """
    try:
        return [(result, None) for result in fn(items)]
    except Exception as batch_error:  # noqa: BLE001 - isolated below, item by item
        logger.warning("batch of %d failed (%s: %s); retrying one by one",
                       len(items), type(batch_error).__name__, batch_error)
    outcomes: list[tuple[R | None, str | None]] = []
    for item in items:
        try:
            outcomes.append((fn([item])[0], None))
        except Exception as error:  # noqa: BLE001
            outcomes.append((None, f"{type(error).__name__}: {error}"))
    return outcomes
