"""Tiny random-weight checkpoints of the real Qwen2-VL architecture, built offline.

Tests and the demo cannot reach a model hub, so they run on ordinary Hugging Face model
directories (config, safetensors, tokenizer, processor, chat template) that this module
writes: the real ``Qwen2VLForConditionalGeneration`` with a few small layers, and a
byte-level BPE tokenizer trained here on the prompts the project uses. They load through
the same ``from_pretrained`` code (transformers and vLLM) that loads Qwen2-VL-2B.

    python -m unime_ray.models.tiny OUT_DIR --role embedder|judge|reranker [--seed N]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

ROLE_SEEDS = {"embedder": 0, "judge": 1, "reranker": 2}

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

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


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Qwen2-VL's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for word in ("Yes", "No"):
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"tiny tokenizer split {word!r}; extend the training text")
    return tokenizer


def build_processor(tokenizer):
    """Qwen2-VL's processor with small image limits (64x64 demo images -> 4 tokens)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, hidden_size: int = 64, layers: int = 2):
    """A Qwen2-VL config a few MB in size, within vLLM's CPU limits.

    vLLM's CPU attention needs head sizes of at least 32, so heads are 32 wide;
    ``mrope_section`` must sum to head_dim / 2.
    """
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    head_dim = 32
    text_config = {
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
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": layers,
        "embed_dim": 64,
        "hidden_size": hidden_size,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        architectures=["Qwen2VLForConditionalGeneration"],
    )


def build_tiny_checkpoint(out_dir: str | Path, role: str = "embedder", seed: int | None = None) -> Path:
    """Write a tiny random-weight Qwen2-VL model directory and return its path."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    if role not in ROLE_SEEDS:
        raise ValueError(f"role must be one of {sorted(ROLE_SEEDS)}, got {role!r}")
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    torch.manual_seed(ROLE_SEEDS[role] if seed is None else seed)
    model = Qwen2VLForConditionalGeneration(build_config(tokenizer)).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    logger.info("wrote tiny %s checkpoint (%d parameters) to %s", role, model.num_parameters(), out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--role", choices=sorted(ROLE_SEEDS), default="embedder")
    parser.add_argument("--seed", type=int, default=None, help="defaults to a fixed seed per role")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_tiny_checkpoint(args.out_dir, args.role, args.seed))


if __name__ == "__main__":
    main()
