"""Mined records -> the reranker's training sequences (METHOD.md section 5).

Per record, with the query's and candidates' texts and images all in the prompts:
- pairwise: (query, positive) -> "Yes" and (query, hardest kept negative: the judge's
  highest score among all of the record's negatives) -> "No", with the judge's prompt;
- listwise: the query and ``list_size`` candidates (the first ``list_size - 1`` mined
  negatives, the positive inserted at a uniformly drawn position) -> "Ans: (i)".

Only the answer's tokens (the reply as the chat template closes it, end-of-turn token
included) carry labels; every prompt token is masked with -100.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from unime_ray.models.pooling import last_token_index
from unime_ray.models.formats import DEFAULT_PROMPT_FORMAT, PromptFormat
from unime_ray.models.inputs import encode, render
from unime_ray.models.reranker import listwise_answer, listwise_images
from unime_ray.rng import seeded_rng
from unime_ray.training.records import RECORD_ERRORS, negative_item, positive_item, query_item, require_negatives

IGNORE = -100  # label of a position without loss (transformers' convention)
YES, NO = "Yes", "No"


@dataclass
class TrainingSequence:
    kind: Literal["pair", "list"]
    messages: list[dict]  # the user turn
    images: list  # in prompt order
    answer: str


@dataclass
class RerankerBatch:
    pairs: list[TrainingSequence] = field(default_factory=list)
    lists: list[TrainingSequence] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (query id, reason)

    @property
    def size(self) -> int:
        return len(self.lists)  # one listwise sequence per usable record


def hardest_negative(neg_scores: Sequence[float]) -> int:
    """The kept negative the judge scored highest (the first, on ties)."""
    return int(np.argmax(neg_scores))


def record_sequences(record: dict, image_root: str | None, list_size: int, rng: np.random.Generator,
                     prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> list[TrainingSequence]:
    """Two pairwise and one listwise sequence; raises a ``RECORD_ERRORS`` on a bad record."""
    require_negatives(record, list_size - 1)
    query, positive = query_item(record, image_root), positive_item(record, image_root)
    negatives = [negative_item(record, i, image_root) for i in range(list_size - 1)]
    hardest = negative_item(record, hardest_negative(record["neg_scores"]), image_root)
    position = int(rng.integers(list_size))
    candidates = negatives[:position] + [positive] + negatives[position:]
    return [
        TrainingSequence("pair", prompts.pair(query, positive), query.images() + positive.images(), YES),
        TrainingSequence("pair", prompts.pair(query, hardest), query.images() + hardest.images(), NO),
        TrainingSequence("list", prompts.listing(query, candidates), listwise_images(query, candidates),
                         listwise_answer(position)),
    ]


def build_reranker_batch(records: list[dict], image_root: str | None, list_size: int, seed: int,
                         step: int, prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> RerankerBatch:
    """The positive's listwise position is drawn per (record, step, seed): reproducible on
    resume, and different each time a record comes back in a later epoch."""
    batch = RerankerBatch()
    for record in records:
        try:
            sequences = record_sequences(record, image_root, list_size, seeded_rng(f"{record['query_id']}@{step}", seed),
                                         prompts)
        except RECORD_ERRORS as error:
            batch.skipped.append((record["query_id"], str(error)))
            continue
        batch.pairs += [s for s in sequences if s.kind == "pair"]
        batch.lists += [s for s in sequences if s.kind == "list"]
    return batch


def prompt_and_reply(processor, messages: list[dict], answer: str) -> tuple[str, str]:
    """(the generation prompt, the text the chat template appends to it for this reply,
    e.g. "Yes<|im_end|>", trailing whitespace dropped)."""
    prompt = render(processor, messages, add_generation_prompt=True)
    reply = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = render(processor, messages + reply, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders a reply that does not extend its generation prompt")
    return prompt, full[len(prompt):].rstrip()


def answer_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_lengths: Sequence[int]) -> torch.Tensor:
    """Labels that keep each row's last ``answer_lengths[row]`` real tokens and mask the
    rest (prompt and padding, either side) with ``IGNORE``. [B, T] -> [B, T]."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
    last = last_token_index(attention_mask)  # [B]
    lengths = torch.as_tensor(answer_lengths, device=input_ids.device)  # [B]
    keep = (positions[None, :] <= last[:, None]) & (positions[None, :] > (last - lengths)[:, None])  # [B, T]
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE))


def encode_sequences(processor, sequences: Sequence[TrainingSequence], device: str = "cpu"):
    """(model inputs, labels) for a padded batch of sequences.

    The prompt and the reply are tokenized as one string, the way the model will read
    them; a check makes sure the labelled tokens are exactly the reply's own tokens.
    """
    tokenizer = processor.tokenizer
    rendered = [prompt_and_reply(processor, s.messages, s.answer) for s in sequences]
    texts = [prompt + reply for prompt, reply in rendered]
    suffixes = [reply for _, reply in rendered]
    batch = encode(processor, texts, [s.images for s in sequences], device)
    answer_ids = [tokenizer(suffix, add_special_tokens=False)["input_ids"] for suffix in suffixes]
    labels = answer_labels(batch["input_ids"], batch["attention_mask"], [len(ids) for ids in answer_ids])
    for row, ids in enumerate(answer_ids):
        if labels[row][labels[row] != IGNORE].tolist() != ids:
            raise ValueError(f"answer {sequences[row].answer!r} does not tokenize apart from its prompt")
    return batch, labels
