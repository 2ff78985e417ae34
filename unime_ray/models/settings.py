"""Settings of an MLLM engine (the judge's, the reranker's), shared by every job and the
service that runs one: which backend, which checkpoint, and how the engine is sized."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from unime_ray.config import StrictModel


class EngineSettings(StrictModel):
    backend: Literal["vllm", "transformers"] = Field("vllm", description="engine: vLLM, or transformers forward passes")
    model: str | None = Field(None, description="MLLM checkpoint: local dir or hub id")
    device: str = Field("cpu", description="transformers backend: 'cpu' or 'cuda'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    forward_batch_size: int = Field(32, ge=1, description="transformers backend: pairs or prompts per forward pass")
    max_model_len: int = Field(2048, ge=64, description="vllm: longest prompt + answer in tokens")
    kv_cache_gib: int | None = Field(1, ge=1, description="vllm on CPU: KV cache GiB (VLLM_CPU_KVCACHE_SPACE); None on GPUs")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"enforce_eager": True, "block_size": 32},
        description="extra vllm.LLM arguments, e.g. tensor_parallel_size, gpu_memory_utilization")

    def engine_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``build_judge``; each backend takes the ones it uses."""
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "max_model_len": self.max_model_len,
                "kv_cache_gib": self.kv_cache_gib, "engine_kwargs": self.engine_kwargs,
                "batch_size": self.forward_batch_size}


class RerankSettings(EngineSettings):
    """A reranker checkpoint (``jobs/train_reranker.py``'s OUT/model) on the embedder's top n."""

    model: str | None = Field(None, description="reranker checkpoint; None: no reranking")
    mode: Literal["listwise", "pointwise"] = Field("listwise", description="one prompt per query, or P(Yes) per pair")
    top_n: int = Field(5, ge=2, description="the embedder's top candidates that get reranked (the paper: 5)")

    def build(self):
        """The ``Reranker`` these settings describe."""
        from unime_ray.models.reranker import Reranker

        engine = self.engine_arguments()
        return Reranker.from_pretrained(engine.pop("model"), backend=self.backend, mode=self.mode, top_n=self.top_n,
                                        **engine)
