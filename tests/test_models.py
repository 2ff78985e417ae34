"""Tiny checkpoints of the real Qwen2-VL architecture, loading, pooling, the hook."""

import subprocess
import sys

import numpy as np
import torch
from conftest import png_bytes
from PIL import Image

from unime_ray.models.embedder import Embedder
from unime_ray.models.pooling import last_token_index, last_token_pool
from unime_ray.models.inputs import Item


def test_last_token_index_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    assert last_token_pool(hidden, right).flatten().tolist() == [2.0, 9.0]


def test_tiny_checkpoint_loads_through_the_auto_classes(checkpoints):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(checkpoints["judge"])
    assert config.model_type == "qwen2_vl" and config.architectures == ["Qwen2VLForConditionalGeneration"]
    processor = AutoProcessor.from_pretrained(checkpoints["judge"])
    for word in ("Yes", "No"):
        assert len(processor.tokenizer.encode(word, add_special_tokens=False)) == 1
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    judge = AutoModelForImageTextToText.from_pretrained(checkpoints["judge"])
    embedder = AutoModelForImageTextToText.from_pretrained(checkpoints["embedder"])
    # Different roles are different random draws (not the same weights twice).
    assert not torch.equal(judge.lm_head.weight, embedder.lm_head.weight)


def test_embedder_normalises_and_is_batch_invariant(checkpoints):
    embedder = Embedder.from_pretrained(checkpoints["embedder"])
    image = Image.open(__import__("io").BytesIO(png_bytes())).convert("RGB")
    items = [Item("Represent the given image.", "", image), Item("", "a red square"),
             Item("Find the caption:", "a much longer text about a red square on a white page", None)]
    together = embedder.embed(items)
    assert together.shape == (3, 64) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Padding must not change a row's embedding (pooling picks the last real token).
    for i, item in enumerate(items):
        assert np.allclose(embedder.embed([item])[0], together[i], atol=1e-5)
    assert not np.allclose(together[0], together[1], atol=1e-3)  # items are told apart


def test_torchvision_imports_in_a_fresh_process_and_the_hook_is_idempotent():
    code = ("import torchvision, transformers; from transformers import Qwen2VLImageProcessor; "
            "from unime_ray.torchvision_hook import define_missing_schemas; print(define_missing_schemas())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # The schemas exist already (defined by the start-up hook or by compiled ops).
    assert out.stdout.strip().splitlines()[-1] == "False"
