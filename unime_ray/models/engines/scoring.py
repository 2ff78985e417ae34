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
Chat = tuple[list[dict], list]  # (chat messages, their images in order)


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


Prompt = tuple[str, list]  # (rendered prompt, its images in order)


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
    tokens: int | None = None  # the prompt's tokens, images expanded
    cached_tokens: int | None = None  # of those, served by the engine's prefix cache (vLLM)


def prompt_tokens(processor, prompt: str, images: Sequence) -> int:
    """Tokens the model sees for ``prompt``: its text tokens, with each image placeholder
    expanded to that image's tokens under the processor's pixel budget. Computed from the
    image sizes alone (``_get_num_multimodal_tokens``, the count the processor itself
    expands to), so checking a pair costs a tokenization, not an image preprocessing."""
    tokens = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if images:
        sizes = [(image.height, image.width) for image in images]
        tokens += sum(n - 1 for n in processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens)
    return tokens


def score_within_budget(processor, pairs: Sequence[Pair], max_prompt_tokens: int,
                        score_prompts: Callable[[Sequence[Prompt]], list[tuple[float, int | None]]]) -> list[JudgeResult]:
    """P(Yes) per pair; ``score_prompts`` gives (score, prefix-cached tokens or None) per prompt. A pair over the token budget fails alone before it reaches the
    engine, naming its count; a batch that raises a data error is split until the failing
    pairs stand alone; a NaN or infinite score is the pair's error."""
    prompts = [(judge_prompt(processor, pair), pair[0].images() + pair[1].images()) for pair in pairs]
    tokens: list[int | None] = []
    results = []
    for prompt, images in prompts:
        try:
            tokens.append(prompt_tokens(processor, prompt, images))
            results.append(JudgeResult(None, f"pair over the token budget: {tokens[-1]} tokens, "
                                             f"limit {max_prompt_tokens}", tokens[-1]))
        except Exception as error:  # noqa: BLE001 - the processor refuses this item (e.g. its aspect ratio)
            tokens.append(None)
            results.append(JudgeResult(None, f"{type(error).__name__}: {error}"))
    fits = [i for i, n in enumerate(tokens) if n is not None and n <= max_prompt_tokens]
    outcomes = call_isolating_failures(score_prompts, [prompts[i] for i in fits]) if fits else []
    for i, (scored, error) in zip(fits, outcomes):
        score, cached = scored if error is None else (None, None)
        if error is None and not np.isfinite(score):
            score, error = None, f"the engine returned a non-finite score ({score})"
        results[i] = JudgeResult(None if score is None else float(score), error, tokens[i], cached)
    return results


class Judge(Protocol):
    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        """P(Yes) for each (query, candidate) pair, with an error instead where it failed."""

    def generate(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
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
