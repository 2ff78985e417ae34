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
from unime_ray.models.formats import DEFAULT_PROMPT_FORMAT, PromptFormat
from unime_ray.models.inputs import Item, fit_item, render

Pair = tuple[Item, Item]
Chat = tuple[list[dict], list]  # (chat messages, their images in order)


def yes_probability(yes: np.ndarray | float, no: np.ndarray | float) -> np.ndarray:
    """e^yes / (e^yes + e^no) = sigmoid(yes - no), in tanh form so nothing overflows.

    ``yes`` and ``no`` may be logits or log-probabilities: the normaliser cancels.
    """
    difference = np.asarray(yes, np.float64) - np.asarray(no, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * difference))


def judge_prompt(processor, pair: Pair, prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> str:
    return render(processor, prompts.pair(*pair), add_generation_prompt=True)


def single_token_ids(tokenizer, words: Sequence[str], checkpoint: str = "") -> list[int]:
    """Token ids of ``words``; each must be a single token, for a one-position score."""
    ids = []
    for word in words:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise ValueError(f"{checkpoint or 'the checkpoint'}: its tokenizer splits {word!r} into {len(tokens)} "
                             f"tokens {pieces}; a score read at one answer position needs each answer to be one "
                             "token (Qwen2-VL's, Qwen2.5-VL's and LLaVA-OneVision's tokenizers are)")
        ids.append(tokens[0])
    return ids


def yes_no_token_ids(tokenizer, checkpoint: str = "") -> tuple[int, int]:
    """Token ids of the judge's answers "Yes" and "No"; raises ``ValueError`` naming the
    checkpoint when either is not one token (checked when an engine starts, before it
    loads any weights, rather than scoring the wrong tokens)."""
    yes_id, no_id = single_token_ids(tokenizer, ("Yes", "No"), checkpoint)
    return yes_id, no_id


@dataclass(frozen=True)
class JudgeResult:
    score: float | None
    error: str | None = None
    tokens: int | None = None  # the prompt's tokens, images expanded
    cached_tokens: int | None = None  # of those, served by the engine's prefix cache (vLLM)


def prompt_tokens(processor, prompt: str, images: Sequence, add_special_tokens: bool = False) -> int:
    """Tokens the model sees for ``prompt``: its text tokens (with the tokenizer's own BOS/EOS
    when a raw-text format adds them), with each image placeholder expanded to that image's
    tokens under the processor's pixel budget. Computed from the image sizes alone
    (``_get_num_multimodal_tokens``, the count the processor itself expands to), so checking
    a pair costs a tokenization, not an image preprocessing."""
    tokens = len(processor.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    if images:
        sizes = [(image.height, image.width) for image in images]
        tokens += sum(n - 1 for n in processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens)
    return tokens


@dataclass(frozen=True)
class JudgeRequest:
    """A pair ready for an engine: its rendered prompt, its images already fitted to the
    pixel budget, and its token count (within the budget). Built on CPUs, ahead of the
    engine (``prepare_pair``), so the accelerator's actor only runs the model."""

    prompt: str
    images: tuple
    tokens: int


Prepared = JudgeRequest | JudgeResult  # a pair ready for the engine, or why it never will be


def prepare_pair(processor, pair: Pair, max_prompt_tokens: int,
                 prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> Prepared:
    """The CPU half of judging a pair whose images are already fitted (``fit_item``): the
    prompt rendered and its tokens counted; a pair over the budget, or one the processor
    refuses, is its own error, naming the count."""
    try:
        prompt = judge_prompt(processor, pair, prompts)
        images = tuple(pair[0].images() + pair[1].images())
        tokens = prompt_tokens(processor, prompt, images)
    except Exception as error:  # noqa: BLE001 - the processor refuses this item (e.g. its aspect ratio)
        return JudgeResult(None, f"{type(error).__name__}: {error}")
    if tokens > max_prompt_tokens:
        return JudgeResult(None, f"pair over the token budget: {tokens} tokens, limit {max_prompt_tokens}", tokens)
    return JudgeRequest(prompt, images, tokens)


def prepare_pairs(processor, pairs: Sequence[Pair], max_prompt_tokens: int,
                  prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> list[Prepared]:
    """``prepare_pair`` for raw pairs: images fitted first (an image the processor refuses
    fails its pair)."""
    prepared = []
    for query, candidate in pairs:
        try:
            fitted = (fit_item(processor.image_processor, query), fit_item(processor.image_processor, candidate))
        except Exception as error:  # noqa: BLE001 - e.g. an aspect ratio the processor refuses
            prepared.append(JudgeResult(None, f"{type(error).__name__}: {error}"))
            continue
        prepared.append(prepare_pair(processor, fitted, max_prompt_tokens, prompts))
    return prepared


def scored(request: JudgeRequest, score: float | None, cached: int | None, error: str | None) -> JudgeResult:
    """An engine's outcome for ``request``; a NaN or infinite score is the pair's error."""
    if error is None and not np.isfinite(score):
        score, error = None, f"the engine returned a non-finite score ({score})"
    return JudgeResult(None if error else float(score), error, request.tokens, None if error else cached)


def score_in_batches(prepared: Sequence[Prepared], score_requests: Callable[[Sequence[JudgeRequest]], list[tuple[float, int | None]]],
                     batch_size: int) -> list[JudgeResult]:
    """Prepared pairs scored by a batch engine, ``batch_size`` requests a call; a batch that
    raises a data error is split until the failing pairs stand alone. ``score_requests``
    gives (score, prefix-cached tokens or None) per request."""
    results: list[JudgeResult | None] = [p if isinstance(p, JudgeResult) else None for p in prepared]
    todo = [i for i, p in enumerate(prepared) if isinstance(p, JudgeRequest)]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        outcomes = call_isolating_failures(score_requests, [prepared[i] for i in chunk])
        for i, (outcome, error) in zip(chunk, outcomes):
            results[i] = scored(prepared[i], *(outcome or (None, None)), error)
    return results


class Judge(Protocol):
    processor: object  # the Hugging Face processor, with the judge's pixel budget
    prompts: PromptFormat  # the checkpoint's pairwise and listwise prompts
    max_model_len: int

    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        """P(Yes) for each (query, candidate) pair, with an error instead where it failed."""

    async def score_prepared(self, prepared: Sequence[Prepared]) -> list[JudgeResult]:
        """P(Yes) for pairs prepared on CPUs (``prepare_pair``); several calls may be in
        flight at once, and an engine keeps them all scheduled."""

    def generate(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        """Greedy answers (the listwise reranker's); raises if any prompt fails."""

    def next_token_logprobs(self, prompts: Sequence[Chat], prefix: str, token_ids: Sequence[int]) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt's generation prompt
        followed by ``prefix`` (the start of the answer): one forward pass, no sampling;
        raises if any prompt fails."""


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
