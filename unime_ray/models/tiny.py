"""Tiny random-weight checkpoints of the real architectures, built offline.

Tests and the demo cannot reach a model hub, so they run on ordinary Hugging Face model
directories (config, safetensors, tokenizer, processor, chat template) that this module
writes: the real ``Qwen2VLForConditionalGeneration`` (the default), Qwen2.5-VL,
LLaVA-OneVision or LLaVA-NeXT with a few small layers, and a byte-level BPE tokenizer
trained here on the prompts the project uses, with the family's special tokens. They
load through the same ``from_pretrained`` code (transformers and vLLM) that loads the
published 2B-8B checkpoints. Each records its input format (``formats.FORMAT_FILE``):
the project's chat format, as every checkpoint of our own.

    python -m unime_ray.models.tiny OUT_DIR [--role embedder|judge|reranker] [--family F] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

ROLE_SEEDS = {"embedder": 0, "judge": 1, "reranker": 2}
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next")  # config.model_type values

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIAL_TOKENS = ["<image>", "<video>"]  # LLaVA's placeholders, after the language model's own
LLAMA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # LLaVA-NeXT-Mistral's language model

# Same structure as Qwen2-VL's own template: a default system turn, vision placeholders
# where the content list has an image, and the assistant header on request.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-OneVision-Qwen2's template (llava-hf/llava-onevision-qwen2-7b-ov-hf, chat_template.json of
# its "Upload processor" commit): per turn, "<|im_start|>role\n", every image as "<image>\n",
# then every text; no default system turn.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# LLaVA-NeXT-Mistral's "[INST] ... [/INST]" turns, images first.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}{% else %}{{ ' ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' [/INST]' }}{% else %}{{ '</s>' }}{% endif %}"
    "{% endfor %}"
)

# Text the tokenizer is trained on: the project's prompts and the demo corpus' words, so
# that prompts tokenize compactly and "Yes" / "No" are single tokens, as in Qwen's.
_TRAINING_TEXT = [
    "I will provide you with a query and a candidate. Please evaluate whether the candidate "
    "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, "
    "respond with 'No'. Query: Candidate: Yes No Yes No Yes No Ans: (1) (2) (3) (4) (5) (6)",
    "Represent the given image with the following question: Represent the given image. "
    "Find me an everyday image that matches the given caption: Find a caption for the given "
    "image. Represent the given image for classification. Represent the given text answer.",
    "You are a helpful assistant. system user assistant",
    "what shape is in the image? what color is the shape? is there a circle? is there a "
    "rectangle? is there a triangle? is the shape red? does the image contain a blue shape? "
    "yes no circle rectangle triangle red green blue black gray teal brown yellow a an the of",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>-_/\\ \n",
]


def _train_bpe(special_tokens: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    return core


def build_tokenizer(vocab_size: int = 1024, family: str = "qwen2_vl"):
    """A byte-level BPE tokenizer with the family's special tokens and chat template: Qwen2's
    (Qwen2-VL, Qwen2.5-VL; LLaVA-OneVision adds ``<image>``), or a Llama-style one that
    adds ``<s>`` (LLaVA-NeXT-Mistral)."""
    from transformers import LlamaTokenizer, Qwen2Tokenizer

    if family == "llava_next":
        core = _train_bpe(LLAMA_SPECIAL_TOKENS + LLAVA_SPECIAL_TOKENS, vocab_size)
        tokenizer = LlamaTokenizer(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", add_bos_token=True, add_eos_token=False)
        tokenizer.chat_template = LLAVA_NEXT_CHAT_TEMPLATE
    else:
        llava = family == "llava_onevision"
        core = _train_bpe(QWEN_SPECIAL_TOKENS + (LLAVA_SPECIAL_TOKENS if llava else []), vocab_size)
        tokenizer = Qwen2Tokenizer(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None)
        tokenizer.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE if llava else CHAT_TEMPLATE
    for word in ("Yes", "No"):
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"tiny tokenizer split {word!r}; extend the training text")
    return tokenizer


# Small image limits: 64x64 demo images -> 4 tokens (Qwen), 16 + a few (LLaVA's 56 px tiles).
QWEN_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
LLAVA_TILE = 56
LLAVA_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]


def build_processor(tokenizer, family: str = "qwen2_vl"):
    """The family's own processor class with small image limits."""
    import transformers as tf

    if family in ("qwen2_vl", "qwen2_5_vl"):
        processor = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        return processor(image_processor=tf.Qwen2VLImageProcessor(**QWEN_PIXELS),
                         video_processor=tf.Qwen2VLVideoProcessor(**QWEN_PIXELS), tokenizer=tokenizer,
                         chat_template=tokenizer.chat_template)
    tile = {"height": LLAVA_TILE, "width": LLAVA_TILE}
    if family == "llava_onevision":
        return tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(size=tile, image_grid_pinpoints=LLAVA_PINPOINTS),
            video_processor=tf.LlavaOnevisionVideoProcessor(size=tile), tokenizer=tokenizer,
            num_image_tokens=(LLAVA_TILE // 14) ** 2, vision_feature_select_strategy="full",
            chat_template=tokenizer.chat_template)
    return tf.LlavaNextProcessor(
        image_processor=tf.LlavaNextImageProcessor(size={"shortest_edge": LLAVA_TILE}, crop_size=tile,
                                                   image_grid_pinpoints=LLAVA_PINPOINTS),
        # CLIP's class token is one more feature than patches; "default" drops it again.
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template)


def _text_config(tokenizer, hidden_size: int, layers: int, **extra) -> dict:
    """The language model's config. vLLM's CPU attention needs head sizes of at least 32,
    so heads are 32 wide."""
    head_dim = 32
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden_size // head_dim,
        "num_key_value_heads": hidden_size // head_dim,
        "max_position_embeddings": 4096,
        # Wider than the default 0.02: a random judge then spreads P(Yes) over ~0.3-0.7
        # instead of ~0.58 +- 0.002, so selection sees both kept and dropped candidates.
        "initializer_range": 0.12,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def build_config(tokenizer, hidden_size: int = 64, layers: int = 2, family: str = "qwen2_vl"):
    """A config a few MB in size, within vLLM's CPU limits. Qwen: ``mrope_section`` must
    sum to head_dim / 2."""
    import transformers as tf

    ids = tokenizer.convert_tokens_to_ids
    if family in ("qwen2_vl", "qwen2_5_vl"):
        text = _text_config(tokenizer, hidden_size, layers, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
        vision = {"depth": layers, "hidden_size": hidden_size, "num_heads": 2, "patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2}
        if family == "qwen2_vl":
            config, architecture = tf.Qwen2VLConfig, "Qwen2VLForConditionalGeneration"
            vision |= {"embed_dim": 64, "mlp_ratio": 2}
        else:  # windowed attention in every block but the last, as Qwen2.5-VL's 7/15/23/31 of 32
            config, architecture = tf.Qwen2_5_VLConfig, "Qwen2_5_VLForConditionalGeneration"
            vision |= {"intermediate_size": 2 * hidden_size, "out_hidden_size": hidden_size, "window_size": 56,
                       "fullatt_block_indexes": [layers - 1]}
        return config(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                      video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                      vision_end_token_id=ids("<|vision_end|>"), architectures=[architecture])
    vision = {"model_type": "siglip_vision_model" if family == "llava_onevision" else "clip_vision_model",
              "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": layers,
              "num_attention_heads": 2, "image_size": LLAVA_TILE, "patch_size": 14}
    if family == "llava_onevision":
        vision["vision_use_head"] = False  # LLaVA reads the patch features; SigLIP's pooling head is unused
    if family == "llava_onevision":
        return tf.LlavaOnevisionConfig(
            text_config={"model_type": "qwen2", **_text_config(tokenizer, hidden_size, layers)},
            vision_config=vision, image_token_id=ids("<image>"), video_token_id=ids("<video>"),
            image_grid_pinpoints=LLAVA_PINPOINTS, vision_feature_select_strategy="full",
            vision_feature_layer=-1, architectures=["LlavaOnevisionForConditionalGeneration"])
    return tf.LlavaNextConfig(
        text_config={"model_type": "mistral", **_text_config(tokenizer, hidden_size, layers)},
        vision_config=vision, image_token_id=ids("<image>"), image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        architectures=["LlavaNextForConditionalGeneration"])


def published_layout(model_dir: Path) -> None:
    """Rename a LLaVA checkpoint's vision-tower weights to the published checkpoints' layout
    (``vision_tower.vision_model.*``). transformers 5 drops that level when it loads a
    CLIP/SigLIP tower and saves without it, and vLLM loads only the published names."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    weights = load_file(path)
    renamed = {re.sub(r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", k): v
               for k, v in weights.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def build_tiny_checkpoint(out_dir: str | Path, role: str = "embedder", seed: int | None = None,
                          family: str = "qwen2_vl", hidden_size: int = 64, layers: int = 2) -> Path:
    """Write a tiny random-weight model directory of ``family`` and return its path.
    ``hidden_size`` is a multiple of 32 (the language model's heads are 32 wide)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from unime_ray.models.formats import record_format

    if role not in ROLE_SEEDS:
        raise ValueError(f"role must be one of {sorted(ROLE_SEEDS)}, got {role!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if hidden_size % 32 or hidden_size < 32 or layers < 1:
        raise ValueError(f"hidden_size must be a positive multiple of 32 and layers >= 1, got {hidden_size}, {layers}")
    out = Path(out_dir)
    tokenizer = build_tokenizer(family=family)
    torch.manual_seed(ROLE_SEEDS[role] if seed is None else seed)
    config = build_config(tokenizer, hidden_size, layers, family)
    model = AutoModelForImageTextToText.from_config(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    if family.startswith("llava"):
        published_layout(out)
    build_processor(tokenizer, family).save_pretrained(out)
    record_format(out)
    logger.info("wrote tiny %s %s checkpoint (%d parameters) to %s", family, role, model.num_parameters(), out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--role", choices=sorted(ROLE_SEEDS), default="embedder")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--seed", type=int, default=None, help="defaults to a fixed seed per role")
    parser.add_argument("--hidden-size", type=int, default=64, help="a multiple of 32")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_tiny_checkpoint(args.out_dir, args.role, args.seed, args.family, args.hidden_size, args.layers))


if __name__ == "__main__":
    main()
