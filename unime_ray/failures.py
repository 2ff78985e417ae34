"""Which failures belong to a row and which to the machine, and batch calls that lose
only the failing rows.

A data error (an image the processor refuses, a prompt it cannot take) is the row's: it
is reported in the row's error column and the job goes on. An infrastructure error (the
engine process died, the device ran out of memory, an actor or node was lost) says
nothing about the rows: it must never become a rejected row. It is re-raised, and an
actor stage turns it into the actor's death so that Ray restarts the actor and retries
the batch on a fresh engine (``exit_on_infrastructure_error``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from typing import Callable, Sequence, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Matched by class name (anywhere in the MRO), so neither torch, vLLM nor Ray need be imported.
INFRASTRUCTURE_ERROR_TYPES = frozenset({
    "EngineDeadError",  # vLLM: the EngineCore process is gone
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
    "ObjectLostError", "OwnerDiedError", "RaySystemError",
})
INFRASTRUCTURE_MESSAGES = ("CUDA out of memory", "CUDA error", "NCCL error", "out of memory on device")


def is_infrastructure_error(error: BaseException) -> bool:
    if any(cls.__name__ in INFRASTRUCTURE_ERROR_TYPES for cls in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in INFRASTRUCTURE_MESSAGES)


def call_isolating_failures(fn: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T]) -> list[tuple[R | None, str | None]]:
    """``fn`` over ``items`` as one batch; if it raises a data error, the batch is split in
    halves until the failing items stand alone, so f bad items cost about f·log2(n) calls
    rather than n. Infrastructure errors are re-raised.

    Returns one (result, error) per item: exactly one of the two is None.
    """
    try:
        return [(result, None) for result in fn(items)]
    except Exception as error:  # noqa: BLE001 - sorted below into the row's or the machine's
        if is_infrastructure_error(error):
            raise
        if len(items) == 1:
            return [(None, f"{type(error).__name__}: {error}")]
        logger.warning("batch of %d failed (%s: %s); splitting it", len(items), type(error).__name__, error)
    half = len(items) // 2
    return call_isolating_failures(fn, items[:half]) + call_isolating_failures(fn, items[half:])


def exit_on_infrastructure_error(call: Callable) -> Callable:
    """Decorates an actor UDF's ``__call__`` (plain or async): an infrastructure error exits
    the actor's process. Ray Data's actor pools run with ``max_restarts`` and
    ``max_task_retries``, so the actor is restarted (a fresh engine) and the batch retried
    there. Raising instead would retry the task on the same broken actor;
    ``ray.actor.exit_actor`` would be taken as an intended exit and not retried (as in
    ``ray.data.llm``'s vLLM stage)."""
    def exit_if_infrastructure(self, error: Exception) -> None:
        if not is_infrastructure_error(error):
            return
        logger.error("%s: %s: %s; exiting so that Ray restarts this actor and retries the batch",
                     type(self).__name__, type(error).__name__, error)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    if inspect.iscoroutinefunction(call):
        @functools.wraps(call)
        async def guarded_async(self, *args, **kwargs):
            try:
                return await call(self, *args, **kwargs)
            except Exception as error:
                exit_if_infrastructure(self, error)
                raise
        return guarded_async

    @functools.wraps(call)
    def guarded(self, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        except Exception as error:
            exit_if_infrastructure(self, error)
            raise
    return guarded
