"""Settings of an MLLM engine (the judge's, the reranker's), shared by every job and the
service that runs one: which backend, which checkpoint, and how the engine is sized."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from unime_ray.config import StrictModel
from unime_ray.models.formats import Pooling


# vLLM on CPU: no CUDA graphs to capture, and the default 128-token KV block is coarser than
# a query's shared prefix, so the prefix cache would never hit.
CPU_ENGINE_KWARGS = {"enforce_eager": True, "block_size": 32}
QWEN2_VL_MIN_PIXELS = 56 * 56  # Qwen2-VL's own lower bound (4 patches of 28 px)


class PixelBudget(StrictModel):
    """How a model reads its inputs. Bounds on an image's pixel count after resizing (aspect
    kept), given to the Hugging Face processor and to vLLM alike: they bound the image's
    tokens (Qwen2-VL: one per 28x28 area, so 672x672 -> 576 tokens); None: the
    checkpoint's own setting. And the input format (``unime_ray.models.formats``)."""

    min_pixels: int | None = Field(QWEN2_VL_MIN_PIXELS, ge=1, description="smaller images are upscaled to this")
    # UniME-V2 embeds and trains Qwen2-VL at 672x672 ("mid" image_resolution).
    max_pixels: int | None = Field(672 * 672, ge=1, description="larger images are downscaled to this")
    format: str | None = Field(
        None, description="input format by name: an embedder's (formats.INPUT_FORMATS), a judge's or reranker's "
                          "prompts (formats.PROMPT_FORMATS); None: the checkpoint's record, else its name, else ours")
    # Which registry ``format`` names: embedders' input formats, or (engines, the reranker's
    # trainer) prompt formats. Checked when the config is parsed, not in an actor.
    FORMAT_KIND: ClassVar[Literal["input", "prompt"]] = "input"

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str | None) -> str | None:
        from unime_ray.models.formats import INPUT_FORMATS_BY_NAME, PROMPT_FORMATS_BY_NAME

        known = INPUT_FORMATS_BY_NAME if cls.FORMAT_KIND == "input" else PROMPT_FORMATS_BY_NAME
        if name is not None and name not in known:
            raise ValueError(f"unknown {cls.FORMAT_KIND} format {name!r}; choose from {sorted(known)}")
        return name


class EmbeddingChanges(StrictModel):
    """An embedder's pooling and attention (NV-Embed), where they differ from its input
    format's; a training job records them in the model it exports, so mining, evaluation
    and serving read that model as it was trained. Judges and rerankers have neither."""

    pooling: Pooling | None = Field(
        None, description="last / mean / latent_attention (a trained layer, saved with the model); None: the format's")
    bidirectional: bool | None = Field(
        None, description="true: no causal mask in the language model (NV-Embed); None: the format's")


class EngineSettings(PixelBudget):
    FORMAT_KIND: ClassVar[Literal["input", "prompt"]] = "prompt"
    # The judge sees two images per pair and 33.8M pairs on MMEB-train: 448x448 (256 tokens
    # an image) keeps a pair near 600 tokens, 2.2x fewer than at 672x672, for a yes/no
    # decision on content that survives the downscale.
    max_pixels: int | None = Field(448 * 448, ge=1, description="larger images are downscaled to this")
    backend: Literal["vllm", "transformers"] = Field("vllm", description="engine: vLLM, or transformers forward passes")
    model: str | None = Field(None, description="MLLM checkpoint: local dir or hub id")
    device: str = Field("cpu", description="transformers backend: 'cpu' or 'cuda'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    forward_batch_size: int = Field(32, ge=1, description="transformers backend: pairs or prompts per forward pass")
    max_model_len: int = Field(2048, ge=64, description="vllm: longest prompt + answer in tokens")
    kv_cache_gib: int | None = Field(1, ge=1, description="vllm on CPU only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE)")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vllm.LLM arguments, e.g. tensor_parallel_size, gpu_memory_utilization")
    # CPU: no CUDA graphs to capture, and the default 128-token KV block is coarser than a
    # query's shared prefix, so the prefix cache would never hit.
    cpu_engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"enforce_eager": True, "block_size": 32},
        description="vllm.LLM arguments applied only when vLLM runs on CPU (engine_kwargs win)")

    def engine_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``build_judge``; each backend takes the ones it uses."""
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "max_model_len": self.max_model_len,
                "kv_cache_gib": self.kv_cache_gib, "engine_kwargs": self.engine_kwargs,
                "cpu_engine_kwargs": self.cpu_engine_kwargs, "batch_size": self.forward_batch_size,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "format": self.format}


class RerankSettings(EngineSettings):
    """A reranker checkpoint (``jobs/train_reranker.py``'s OUT/model) on the embedder's top n."""

    model: str | None = Field(None, description="reranker checkpoint; None: no reranking")
    mode: Literal["listwise", "pointwise"] = Field("listwise", description="one prompt per query, or P(Yes) per pair")
    top_n: int = Field(5, ge=2, description="the embedder's top candidates that get reranked (the paper: 5)")
    listwise: Literal["constrained", "generate"] = Field(
        "constrained", description="listwise: the label tokens' distribution in one pass, or a generated answer")

    def build(self):
        """The ``Reranker`` these settings describe."""
        from unime_ray.models.reranker import Reranker

        engine = self.engine_arguments()
        return Reranker.from_pretrained(engine.pop("model"), backend=self.backend, mode=self.mode, top_n=self.top_n,
                                        listwise=self.listwise, **engine)
