"""The reranker (METHOD.md section 5): one interface, two modes, two engines.

- ``listwise``: one prompt holds the query and the embedder's top ``top_n`` candidates,
  and the model answers "Ans: (i)". ``constrained`` (the default) reads the answer in one
  forward pass: the prompt plus "Ans: (", and the probabilities of the n label tokens
  "1".."n" at the next position, renormalised over them, give a distribution over the
  candidates that orders all of them and cannot be malformed. Labels 10 to 19 are two
  digits (Qwen's tokenizers write numbers digit by digit): a second pass after "Ans: (1"
  reads ")" (the label 1) against "0".."9" (10..19). ``generate`` lets the model
  write its answer: candidate i becomes rank 1, the others keep the embedder's order, and
  an answer that names no listed candidate falls back to the embedder's order (counted).
- ``pointwise``: P(Yes) of every (query, candidate) pair with the judge's prompt,
  then sort by it.

The engine is a judge backend (``vllm`` or ``transformers``), which scores pairs and
generates short answers from the same rendered prompts, in the checkpoint's prompt format
(``formats.PromptFormat``): the one the reranker is trained on
(``unime_ray.training.reranker_data``), or UniME-V2's for its published reranker.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from unime_ray import metrics
from unime_ray.failures import call_isolating_failures
from unime_ray.models.engines.scoring import build_judge, single_token_ids
from unime_ray.models.inputs import Item

logger = logging.getLogger(__name__)

Mode = Literal["listwise", "pointwise"]
Listwise = Literal["constrained", "generate"]
ANSWER_PREFIX = "Ans: ("  # the training answer "Ans: (i)" up to its label
MAX_LISTWISE = 19  # labels of one or two digits, the second read after "1"

_ANSWER = re.compile(r"\(\s*(\d+)\s*\)")


def listwise_images(query: Item, candidates: Sequence[Item]) -> list:
    """Images in the order the prompt shows them."""
    return query.images() + [image for candidate in candidates for image in candidate.images()]


def listwise_answer(index: int) -> str:
    """The training target for the candidate at 0-based ``index``: "Ans: (index + 1)"."""
    return f"Ans: ({index + 1})"


def parse_listwise_answer(text: str | None, num_candidates: int) -> int | None:
    """0-based index of the candidate an answer names, or None when it names none.

    The first "(i)" counts; an i outside 1..num_candidates, or no "(i)" at all, is
    malformed.
    """
    match = _ANSWER.search(text or "")
    if match is None:
        return None
    number = int(match.group(1))
    return number - 1 if 1 <= number <= num_candidates else None


def promote(choice: int, num_candidates: int) -> list[int]:
    """Candidate ``choice`` first, the others in their given order."""
    return [choice] + [i for i in range(num_candidates) if i != choice]


def label_distribution(logprobs: Sequence[float]) -> np.ndarray:
    """The label tokens' log-probabilities -> probabilities renormalised over the labels
    (a softmax: whatever mass the model puts elsewhere drops out)."""
    values = np.asarray(logprobs, np.float64)
    weights = np.exp(values - values.max())
    return weights / weights.sum()


def label_logprobs(first: Sequence[float], second: Sequence[float] | None, n: int) -> list[float]:
    """Log-probabilities of the labels 1..n. ``first``: of the digits "1".."9" after
    "Ans: ("; ``second`` (n >= 10): of ")" and "0".."9" after "Ans: (1", so that label 1 is
    "1" then ")" and label 1d is "1" then "d"."""
    if n < 10:
        return list(first[:n])
    if second is None:
        raise ValueError(f"{n} labels need the second digit's log-probabilities")
    return [first[0] + second[0], *first[1:9], *(first[0] + second[1 + d] for d in range(n - 9))]


def order_by_scores(scores: Sequence[float | None]) -> list[int]:
    """Indices by descending score, ties in the given order; unscored candidates last."""
    return sorted(range(len(scores)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0)))


@dataclass(frozen=True)
class Ranking:
    """A reranked candidate list: ``order`` holds input indices, best first."""

    order: list[int]
    # Per reranked candidate, input order: P(Yes) (pointwise), or the probability that the
    # answer names it (constrained listwise).
    scores: list[float | None] | None = None
    answer: str | None = None  # listwise: the model's raw answer (constrained: the label it puts first)
    fallback: bool = False  # listwise: the answer was unusable, ``order`` is the embedder's
    error: str | None = None  # why the engine failed for this request (then ``fallback``)


Request = tuple[Item, Sequence[Item]]  # (query, candidates in the embedder's order)


class Reranker:
    def __init__(self, engine, mode: Mode = "listwise", top_n: int = 5, max_answer_tokens: int = 8,
                 listwise: Listwise = "constrained"):
        if mode not in ("listwise", "pointwise"):
            raise ValueError(f"mode must be 'listwise' or 'pointwise', got {mode!r}")
        if listwise not in ("constrained", "generate"):
            raise ValueError(f"listwise must be 'constrained' or 'generate', got {listwise!r}")
        self.engine, self.mode, self.top_n, self.max_answer_tokens = engine, mode, top_n, max_answer_tokens
        self.listwise = listwise
        if not 2 <= top_n <= MAX_LISTWISE and mode == "listwise":
            raise ValueError(f"listwise reranking labels 2 to {MAX_LISTWISE} candidates, got top_n={top_n}")
        if mode == "listwise" and listwise == "constrained":
            tokenizer = engine.processor.tokenizer
            self.digit_ids = single_token_ids(tokenizer, [str(d) for d in range(1, 10)])
            self.second_ids = single_token_ids(tokenizer, [")", *(str(d) for d in range(10))])
            for label in range(10, top_n + 1):  # read digit by digit: the tokenizer must write it so
                if tokenizer.encode(str(label), add_special_tokens=False) != [self.second_ids[1 + label // 10],
                                                                               self.second_ids[1 + label % 10]]:
                    raise ValueError(f"the reranker's tokenizer does not write {label} digit by digit; "
                                     f"constrained listwise reranking reads at most 9 candidates with it")
        self.prompts = engine.prompts
        self.fallbacks = 0  # listwise answers that named no candidate, or failed

    @classmethod
    def from_pretrained(cls, model: str, backend: str = "vllm", mode: Mode = "listwise", top_n: int = 5,
                        listwise: Listwise = "constrained", **engine_kwargs) -> "Reranker":
        """A reranker on a model directory (e.g. a trained reranker's OUT/model)."""
        engine_kwargs.setdefault("max_images_per_prompt", top_n + 1)  # a listwise prompt: query + top_n
        return cls(build_judge(backend, model=model, **engine_kwargs), mode, top_n, listwise=listwise)

    def rerank(self, query: Item, candidates: Sequence[Item]) -> Ranking:
        return self.rerank_batch([(query, candidates)])[0]

    def rerank_batch(self, requests: Sequence[Request]) -> list[Ranking]:
        """Rerank each request's first ``top_n`` candidates; the rest keep their places.

        The engine sees all requests at once (one batch for vLLM to schedule).
        """
        heads = [list(candidates[: self.top_n]) for _, candidates in requests]
        if self.mode == "pointwise":
            rankings = self._pointwise(requests, heads)
        elif self.listwise == "constrained":
            rankings = self._listwise_constrained(requests, heads)
        else:
            rankings = self._listwise(requests, heads)
        return [Ranking(ranking.order + list(range(len(head), len(candidates))), ranking.scores, ranking.answer,
                        ranking.fallback, ranking.error)
                for ranking, head, (_, candidates) in zip(rankings, heads, requests)]

    def _pointwise(self, requests: Sequence[Request], heads: list[list[Item]]) -> list[Ranking]:
        pairs = [(query, candidate) for (query, _), head in zip(requests, heads) for candidate in head]
        results = iter(self.engine.score(pairs))
        rankings = []
        for head in heads:
            judged = [next(results) for _ in head]
            scores = [result.score for result in judged]
            errors = [result.error for result in judged if result.error]
            rankings.append(Ranking(order_by_scores(scores), scores, error="; ".join(errors) or None))
        return rankings

    def _fallback(self, head: list[Item], answer: str | None, error: str | None) -> Ranking:
        """The embedder's order, counted, for a listwise request with no usable answer."""
        self.fallbacks += 1
        metrics.inc("rerank_fallbacks")
        logger.debug("listwise answer %r names none of %d candidates%s; keeping the embedder's order",
                     answer, len(head), f" ({error})" if error else "")
        return Ranking(list(range(len(head))), answer=answer, fallback=True, error=error)

    def _prompts(self, requests: Sequence[Request], heads: list[list[Item]]) -> list:
        return [(self.prompts.listing(query, head), listwise_images(query, head))
                for (query, _), head in zip(requests, heads)]

    def _listwise(self, requests: Sequence[Request], heads: list[list[Item]]) -> list[Ranking]:
        answers = call_isolating_failures(lambda batch: self.engine.generate(batch, self.max_answer_tokens),
                                          self._prompts(requests, heads))
        rankings = []
        for (answer, error), head in zip(answers, heads):
            choice = parse_listwise_answer(answer, len(head))
            rankings.append(self._fallback(head, answer, error) if choice is None
                            else Ranking(promote(choice, len(head)), answer=answer))
        return rankings

    def _listwise_constrained(self, requests: Sequence[Request], heads: list[list[Item]]) -> list[Ranking]:
        prompts = self._prompts(requests, heads)
        outcomes = call_isolating_failures(
            lambda batch: self.engine.next_token_logprobs(batch, ANSWER_PREFIX, self.digit_ids), prompts)
        seconds: list = [(None, None)] * len(prompts)
        if self.top_n >= 10:  # only lists of 10 or more need the second digit
            long = [i for i, head in enumerate(heads) if len(head) >= 10]
            read = call_isolating_failures(
                lambda batch: self.engine.next_token_logprobs(batch, ANSWER_PREFIX + "1", self.second_ids),
                [prompts[i] for i in long])
            for i, outcome in zip(long, read):
                seconds[i] = outcome
        rankings = []
        for (first, error), (second, second_error), head in zip(outcomes, seconds, heads):
            if error is not None or second_error is not None:
                rankings.append(self._fallback(head, None, error or second_error))
                continue
            probabilities = label_distribution(label_logprobs(first, second, len(head)))  # its own labels only
            order = order_by_scores(probabilities.tolist())
            rankings.append(Ranking(order, probabilities.tolist(), answer=listwise_answer(order[0])))
        return rankings
