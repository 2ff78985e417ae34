"""MLLM-as-a-Judge (METHOD.md section 2): the prompt, the score, the backend interface.

The score of a (query, candidate) pair is s = e^l_yes / (e^l_yes + e^l_no), from the
first answer position's logits of the "Yes" and "No" tokens: one forward pass, no
sampling. Backends (``vllm``, ``transformers``) render the same prompt string with the
model's chat template and differ only in the engine that runs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from unime_ray.failures import call_isolating_failures
from unime_ray.models.inputs import Item, render, user_turn

JUDGE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate "
    "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, "
    "respond with 'No'."
)

Pair = tuple[Item, Item]
Prompt = tuple[list[dict], list]  # (chat messages, their images in order)


def yes_probability(yes: np.ndarray | float, no: np.ndarray | float) -> np.ndarray:
    """e^yes / (e^yes + e^no) = sigmoid(yes - no), in tanh form so nothing overflows.

    ``yes`` and ``no`` may be logits or log-probabilities: the normaliser cancels.
    """
    difference = np.asarray(yes, np.float64) - np.asarray(no, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * difference))


def judge_messages(query: Item, candidate: Item) -> list[dict]:
    """The judge prompt with the query's and candidate's text and images in place.

    The query comes before the candidate, so all pairs of one query share a prefix that
    the engine's prefix cache reuses.
    """
    content = [{"type": "text", "text": JUDGE_PROMPT + "\nQuery: "}, *query.content()]
    content += [{"type": "text", "text": "\nCandidate: "}, *candidate.content()]
    return user_turn(content)


def judge_prompt(processor, pair: Pair) -> str:
    return render(processor, judge_messages(*pair), add_generation_prompt=True)


def yes_no_token_ids(tokenizer, yes: str = "Yes", no: str = "No") -> tuple[int, int]:
    """Token ids of the answers; each must be a single token for a one-position score."""
    ids = []
    for word in (yes, no):
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"the judge's tokenizer splits {word!r} into {len(tokens)} tokens")
        ids.append(tokens[0])
    return ids[0], ids[1]


@dataclass(frozen=True)
class JudgeResult:
    score: float | None
    error: str | None = None


def score_isolating_failures(score_batch: Callable[[Sequence[Pair]], list[float]], pairs: Sequence[Pair]) -> list[JudgeResult]:
    """Score a batch; if it fails, pair by pair, so one bad pair costs only itself."""
    return [JudgeResult(None if score is None else float(score), error)
            for score, error in call_isolating_failures(score_batch, pairs)]


class Judge(Protocol):
    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        """P(Yes) for each (query, candidate) pair, with an error instead where it failed."""

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[str]:
        """Greedy answers (the listwise reranker's); raises if any prompt fails."""


BACKENDS = {
    "transformers": "unime_ray.models.engines.transformers_engine:TransformersJudge",
    "vllm": "unime_ray.models.engines.vllm_engine:VLLMJudge",
}


def build_judge(backend: str, **kwargs) -> Judge:
    """Instantiate a backend by name; engines are imported only when chosen."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown judge backend {backend!r}; choose from {sorted(BACKENDS)}")
    module, name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
