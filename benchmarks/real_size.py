"""Real-size models on this machine: random-initialised checkpoints with the exact
architecture configs of Qwen2-VL-2B-Instruct and Qwen2.5-VL-3B-Instruct (written here
from their published config values; no weights downloaded), loaded through the project's
normal code. Per model: one embedding batch and one judge batch at 672x672 images, on
transformers and on vLLM (CPU), and one embedder training step with LoRA (DoRA) and
GradCache. Each phase runs in its own process, so each peak memory is its own.

Records tokens per item and per pair, seconds, peak resident memory, and whether the
default ``max_model_len`` and pixel budgets hold; writes benchmarks/results/real_size.json.

    python benchmarks/real_size.py [--models qwen2-vl-2b,qwen2.5-vl-3b] [--work /tmp/unime-real-size]

The tokenizer is the tiny checkpoints' (a real one would need the hub): image tokens are
exact (they depend on the image processor and the merge size only), text tokens are
those of a 1,024-token BPE, which splits English more finely than Qwen's 151,646-token
vocabulary, so the text counts are upper bounds. The config's special-token ids are
mapped to that tokenizer's; every size (layers, widths, vocabulary) is Qwen's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from reporting import REPO, setup_logging, write_result

logger = logging.getLogger("benchmarks.real_size")

# Qwen/Qwen2-VL-2B-Instruct config.json (values as published; the reconstruction agrees with
# the copies re-saved by transformers, e.g. onnx-community/Qwen2-VL-2B-Instruct).
QWEN2_VL_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "hidden_act": "silu",
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "max_position_embeddings": 32768, "max_window_layers": 28, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True,
    "vocab_size": 151936, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
}
# Qwen/Qwen2.5-VL-3B-Instruct config.json.
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "max_position_embeddings": 128000, "max_window_layers": 70, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True,
    "vocab_size": 151936, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
}
MODELS = {"qwen2-vl-2b": QWEN2_VL_2B, "qwen2.5-vl-3b": QWEN2_5_VL_3B}
# Qwen2-VL's preprocessor_config.json: 4 to 16,384 merged patches an image.
PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056}
IMAGE = 672  # UniME-V2's "mid" resolution
FORMAT = "unime-v2-qwen2vl"  # the published embedders' input (raw text, 672x672)


class TreePeak:
    """Peak resident memory of this process and its children together (vLLM's engine core
    runs in one), sampled every 0.2 s on a thread, GiB."""

    def __init__(self):
        import threading

        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.wait(0.2):
            try:
                self.peak = max(self.peak, sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]))
            except psutil.Error:  # a child exited between listing and reading
                continue

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        return {"peak_rss_gib": round(self.peak / 1024 ** 3, 2)}


def images(n: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(n)]


def items():
    """An image+question query (a 672x672 image) and a text target, as in MMEB's VQA tasks."""
    from unime_ray.models.inputs import Item

    return [Item("Represent the given image with the following question:", "What is prohibited in the shade?",
                 images(1)[0]), Item("", "parking/standing")]


# --- phases (each in its own process) ------------------------------------------------------

def build(model_dir: Path, name: str) -> dict:
    import torch
    import transformers as tf

    from unime_ray.models.formats import input_format, record_format
    from unime_ray.models.tiny import build_tokenizer

    values = dict(MODELS[name])
    tokenizer = build_tokenizer()
    ids = {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "vision_start_token_id": "<|vision_start|>",
           "vision_end_token_id": "<|vision_end|>", "vision_token_id": "<|vision_pad|>",
           "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>"}
    values |= {key: tokenizer.convert_tokens_to_ids(token) for key, token in ids.items()}
    config = tf.AutoConfig.for_model(**values)
    started = time.perf_counter()
    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(model_dir)
    processor = tf.Qwen2VLProcessor if values["model_type"] == "qwen2_vl" else tf.Qwen2_5_VLProcessor
    processor(image_processor=tf.Qwen2VLImageProcessor(**PREPROCESSOR),
              video_processor=tf.Qwen2VLVideoProcessor(**PREPROCESSOR),
              tokenizer=tokenizer, chat_template=tokenizer.chat_template).save_pretrained(model_dir)
    record_format(model_dir, input_format(FORMAT))
    return {"parameters": model.num_parameters(), "vision_parameters": sum(p.numel() for n, p in
                                                                            model.named_parameters() if "visual" in n),
            "build_seconds": round(time.perf_counter() - started, 1)}


def embed_transformers(model_dir: Path) -> dict:
    from unime_ray.models.embedder import Embedder

    started = time.perf_counter()
    embedder = Embedder.from_pretrained(str(model_dir), dtype="bfloat16", max_pixels=IMAGE * IMAGE)
    loaded = time.perf_counter()
    batch = items()
    vectors = embedder.embed(batch)
    prepared = [embedder.format.prepare(item) for item in batch]
    encoded = embedder.processor(text=embedder.prompts(prepared), images=[i.image for i in prepared if i.image],
                                 padding=True, add_special_tokens=embedder.format.add_special_tokens)
    return {"load_seconds": round(loaded - started, 1), "batch_seconds": round(time.perf_counter() - loaded, 1),
            "items": len(batch), "tokens_per_item": [int(sum(m)) for m in encoded["attention_mask"]],
            "dim": int(vectors.shape[1]), "finite": bool(np.isfinite(vectors).all())}


def embed_vllm(model_dir: Path) -> dict:
    """The same items through vLLM's pooling runner (last token, normalised: the format's
    pooling), to size an embedding deployment on vLLM."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM
    from vllm.config import PoolerConfig

    from unime_ray.models.formats import resolve_input_format
    from unime_ray.models.loading import load_processor

    fmt = resolve_input_format(model_dir)
    processor = load_processor(str(model_dir), max_pixels=IMAGE * IMAGE)
    started = time.perf_counter()
    llm = LLM(model=str(model_dir), runner="pooling", dtype="bfloat16", max_model_len=2048, enforce_eager=True,
              mm_processor_kwargs={"max_pixels": IMAGE * IMAGE}, limit_mm_per_prompt={"image": 1},
              pooler_config=PoolerConfig(pooling_type="LAST", use_activation=True))
    loaded = time.perf_counter()
    prepared = [fmt.prepare(item) for item in items()]
    requests = [{"prompt": fmt.text(processor, item)} | ({"multi_modal_data": {"image": item.image}} if item.image
                                                         else {}) for item in prepared]
    outputs = llm.embed(requests, use_tqdm=False)
    vectors = np.array([o.outputs.embedding for o in outputs])
    return {"load_seconds": round(loaded - started, 1), "batch_seconds": round(time.perf_counter() - loaded, 1),
            "items": len(requests), "tokens_per_item": [len(o.prompt_token_ids) for o in outputs],
            "finite": bool(np.isfinite(vectors).all())}


def judge(model_dir: Path, backend: str) -> dict:
    """Two pairs, every image at 672x672: (image query, image candidate), (image query, text)."""
    from unime_ray.models.engines.scoring import build_judge
    from unime_ray.models.inputs import Item

    query, candidate = items()[0], Item("Represent the given image.", "", images(3)[2])
    started = time.perf_counter()
    engine = build_judge(backend, model=str(model_dir), dtype="bfloat16", max_model_len=2048, kv_cache_gib=2,
                         min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, batch_size=2)
    loaded = time.perf_counter()
    results = engine.score([(query, candidate), (query, Item("", "parking/standing"))])
    seconds = time.perf_counter() - loaded
    if hasattr(engine, "close"):
        engine.close()
    return {"load_seconds": round(loaded - started, 1), "batch_seconds": round(seconds, 1), "pairs": len(results),
            "tokens_per_pair": [r.tokens for r in results], "errors": [r.error for r in results],
            "scores": [r.score for r in results]}


def train_step(model_dir: Path, checkpointing: bool = False) -> dict:
    """One embedder step as the trainer takes it: LoRA (DoRA, r=16) on the language model,
    GradCache in chunks of 2, soft-label loss, then the optimizer step; one record (the
    query, its positive and a hard negative), with or without gradient checkpointing."""
    import torch

    from unime_ray.models.embedder import Embedder
    from unime_ray.models.formats import resolve_input_format
    from unime_ray.models.inputs import Item
    from unime_ray.models.loading import load_model, load_processor
    from unime_ray.training.batch import EmbedBatch
    from unime_ray.training.embedder_step import embedder_step, make_loss_fn
    from unime_ray.training.lora import LoraSettings, apply_lora

    started = time.perf_counter()
    torch.manual_seed(0)
    model = apply_lora(load_model(str(model_dir), dtype="bfloat16"), LoraSettings())
    if checkpointing:  # as the trainer does with gradient_checkpointing=true
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    embedder = Embedder(load_processor(str(model_dir), max_pixels=IMAGE * IMAGE), model,
                        input_format=resolve_input_format(model_dir))
    loaded = time.perf_counter()
    queries, candidates = items()[:1], [items()[1], Item("", "no parking")]
    batch = EmbedBatch(queries, candidates, torch.tensor([[0, 1]]), torch.tensor([[0.9, 0.3]]), [])
    loss = embedder_step(embedder.encode, batch, make_loss_fn(batch, "soft_label", 0.02), chunk_size=2)
    parameters = [p for p in model.parameters() if p.requires_grad]
    torch.optim.AdamW(parameters, lr=1e-4).step()
    return {"load_seconds": round(loaded - started, 1), "step_seconds": round(time.perf_counter() - loaded, 1),
            "records": 1, "candidates": len(candidates), "gradcache_chunk": 2, "loss": float(loss),
            "gradient_checkpointing": checkpointing,
            "trainable_parameters": sum(p.numel() for p in parameters)}


def budgets(model_dir: Path) -> dict:
    """Whether the defaults hold: tokens of a judge pair and of a listwise prompt (top 5) at
    the judge's default 448x448 budget and at 672x672, against max_model_len=2048."""
    from unime_ray.models.engines.scoring import judge_prompt, prompt_tokens
    from unime_ray.models.formats import DEFAULT_PROMPT_FORMAT
    from unime_ray.models.inputs import Item, fit_item, render
    from unime_ray.models.loading import load_processor
    from unime_ray.models.settings import EngineSettings

    settings = EngineSettings()
    query = items()[0]
    candidates = [Item("Represent the given image.", "", image) for image in images(5)]
    result = {"max_model_len": settings.max_model_len}
    for side in (448, IMAGE):
        processor = load_processor(str(model_dir), settings.min_pixels, side * side)
        q, cands = fit_item(processor.image_processor, query), [fit_item(processor.image_processor, c) for c in candidates]
        pair = prompt_tokens(processor, judge_prompt(processor, (q, cands[0])), q.images() + cands[0].images())
        listing = render(processor, DEFAULT_PROMPT_FORMAT.listing(q, cands))
        listwise = prompt_tokens(processor, listing, q.images() + [c.image for c in cands])
        result[f"{side}x{side}"] = {"pair_tokens": pair, "listwise_top5_tokens": listwise,
                                    "pair_fits": pair < settings.max_model_len,
                                    "listwise_fits": listwise < settings.max_model_len}
    return result


PHASES = {"build": None, "embed_transformers": embed_transformers, "embed_vllm": embed_vllm,
          "judge_transformers": lambda d: judge(d, "transformers"), "judge_vllm": lambda d: judge(d, "vllm"),
          "train_step": train_step, "train_step_checkpointed": lambda d: train_step(d, checkpointing=True),
          "budgets": budgets}


def run_phase(phase: str, model_dir: Path, name: str, log: Path) -> dict:
    """``phase`` in a fresh process (its output to ``log``); its JSON answer plus its wall time."""
    started = time.perf_counter()
    answer = log.with_suffix(f".{phase}.json")
    answer.unlink(missing_ok=True)
    with log.open("a") as stream:
        done = subprocess.run([sys.executable, __file__, "--phase", phase, "--model-dir", str(model_dir),
                               "--name", name, "--answer", str(answer)], stdout=stream, stderr=stream, cwd=REPO)
    if done.returncode == -9:  # SIGKILL: on a machine of its own, the kernel's OOM killer
        return {"error": f"killed (SIGKILL: out of memory, see dmesg); see {log}"}
    if done.returncode != 0 or not answer.exists():
        return {"error": f"exit {done.returncode}; see {log}"}
    return json.loads(answer.read_text()) | {"wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", default="/tmp/unime-real-size", help="checkpoints (4-8 GB each) and logs")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/real_size.json"))
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--answer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child: one phase, its answer written to --answer
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        model_dir = Path(args.model_dir)
        peak = TreePeak()
        answer = build(model_dir, args.name) if args.phase == "build" else PHASES[args.phase](model_dir)
        Path(args.answer).write_text(json.dumps(answer | peak.stop()))
        return
    setup_logging()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models.split(","):
        model_dir = work / name
        log = work / f"{name}.log"
        results[name] = {}
        for phase in PHASES:
            logger.info("%s: %s", name, phase)
            results[name][phase] = run_phase(phase, model_dir, name, log)
            logger.info("%s: %s -> %s", name, phase, results[name][phase])
    write_result({"image_side": IMAGE, "format": FORMAT, "models": results}, args.out)


if __name__ == "__main__":
    main()
