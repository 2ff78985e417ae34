"""The judge on transformers: one forward pass, logits of Yes/No at the answer position;
for the listwise reranker, the same for its candidates' labels, or greedy short answers."""

from __future__ import annotations

import asyncio
import threading
from typing import Sequence

import torch

from unime_ray.models.engines.scoring import (Chat, JudgeRequest, JudgeResult, Pair, Prepared, prepare_pairs,
                                              score_in_batches, yes_no_token_ids, yes_probability)
from unime_ray.models.embedder import pooled_hidden
from unime_ray.models.formats import resolve_prompt_format
from unime_ray.models.inputs import encode, render
from unime_ray.models.loading import load_model, load_processor


class TransformersJudge:
    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 16,
                 max_model_len: int = 2048, min_pixels: int | None = None, max_pixels: int | None = None,
                 format: str | None = None, **_engine):
        self.device = device
        self.batch_size = batch_size
        # No engine limit here; the same budget as vLLM's keeps the two backends' rows identical.
        self.max_model_len = max_model_len
        self.processor = load_processor(model, min_pixels, max_pixels)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer, model)
        self.prompts = resolve_prompt_format(model, format)
        self.model = load_model(model, device, dtype)
        self.lock = threading.Lock()  # one forward pass at a time, however many batches wait

    def _next_token_logits(self, prompts: Sequence[str], images: Sequence[Sequence]) -> torch.Tensor:
        """[B, V] logits of the position after each prompt."""
        batch = encode(self.processor, prompts, images, self.device)
        # Only the answer position's logits are needed: project that one hidden state.
        return self.model.get_output_embeddings()(pooled_hidden(self.model, batch)).float()

    @torch.no_grad()
    def _score_requests(self, requests: Sequence[JudgeRequest]) -> list[tuple[float, None]]:
        logits = self._next_token_logits([r.prompt for r in requests], [r.images for r in requests])  # [B, V]
        scores = yes_probability(logits[:, self.yes_id].cpu().numpy(), logits[:, self.no_id].cpu().numpy()).tolist()
        return [(score, None) for score in scores]  # no prefix cache

    def _score_batches(self, prepared: Sequence[Prepared]) -> list[JudgeResult]:
        with self.lock:
            return score_in_batches(prepared, self._score_requests, self.batch_size)

    async def score_prepared(self, prepared: Sequence[Prepared]) -> list[JudgeResult]:
        return await asyncio.to_thread(self._score_batches, prepared)

    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        return self._score_batches(prepare_pairs(self.processor, pairs, self.max_model_len - 1, self.prompts))

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[Chat], prefix: str, token_ids: Sequence[int]) -> list[list[float]]:
        rows: list[list[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            logits = self._next_token_logits([render(self.processor, messages) + prefix for messages, _ in chunk],
                                              [images for _, images in chunk])
            rows += torch.log_softmax(logits, dim=-1)[:, list(token_ids)].cpu().tolist()
        return rows

    @torch.no_grad()
    def generate(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        """Greedy answers to chat prompts given as (messages, images)."""
        answers: list[str] = []
        tokenizer = self.processor.tokenizer
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            batch = encode(self.processor, [render(self.processor, messages) for messages, _ in chunk],
                           [images for _, images in chunk], self.device)
            output = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
            # Left padding: every row's answer starts after the padded prompt length.
            answers += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return answers
