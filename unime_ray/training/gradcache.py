"""GradCache: a large batch's gradient with the memory of a small chunk.

1. Encode every item in chunks without building graphs, keeping each chunk's RNG state.
2. Compute the loss on those embeddings (as leaves) and backpropagate to them only.
3. Re-encode each chunk with graphs, RNG state restored (same dropout masks), and
   backpropagate the cached embedding gradients through it.

The plain path (one forward with graphs, ``loss.backward()``) and this one share the
same ``loss_fn``, and a test checks that they give the same loss and gradients.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch

Encode = Callable[[Sequence], torch.Tensor]  # items -> [n, dim] embeddings
LossFn = Callable[[torch.Tensor], torch.Tensor]  # [n, dim] embeddings of all items -> scalar


class RngState:
    """CPU (and CUDA, where present) RNG state, to replay dropout exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @contextmanager
    def restored(self):
        cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)


def plain_step(encode: Encode, items: Sequence, loss_fn: LossFn) -> torch.Tensor:
    """One forward with graphs over all items, then backward. Returns the loss."""
    loss = loss_fn(encode(items))
    loss.backward()
    return loss.detach()


def gradcache_step(encode: Encode, items: Sequence, loss_fn: LossFn, chunk_size: int) -> torch.Tensor:
    """The same gradients as ``plain_step`` with at most ``chunk_size`` items in a graph."""
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    # Step 1: embeddings without graphs, remembering each chunk's RNG state.
    states, reps = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState())
            reps.append(encode(chunk))
    embeddings = torch.cat(reps).detach().requires_grad_()  # [n, dim]
    # Step 2: the loss and its gradient with respect to the embeddings.
    loss = loss_fn(embeddings)
    loss.backward()
    cached = embeddings.grad.split([len(c) for c in chunks])
    # Step 3: re-encode each chunk with graphs and push the cached gradients through.
    for chunk, state, grad in zip(chunks, states, cached):
        with state.restored():
            torch.autograd.backward(encode(chunk), grad)
    return loss.detach()
