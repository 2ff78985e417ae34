"""Input formats: each registry entry's token ids and image placement, on the tokenizer of a
tiny checkpoint of its family, equal a sequence written down from the reference code
(the source file and line beside each); resolution from a config, a name, a record."""

import importlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from unime_ray.models.embedder import Embedder
from unime_ray.models.pooling import last_token_pool, mean_pool
from unime_ray.models.engines.scoring import yes_no_token_ids
from unime_ray.models.formats import (FORMAT_FILE, JUDGE_PROMPT, UNIME_V2_LISTWISE_PROMPT,
                                      input_format, prompt_format, record_format, resolve_formats,
                                      resolve_input_format, resolve_prompt_format)
from unime_ray.models.inputs import Item, render
from unime_ray.models.loading import load_processor
from unime_ray.models.reranker import ANSWER_PREFIX, listwise_images
from unime_ray.models.tiny import FAMILIES, build_tiny_checkpoint

QUESTION = Item("Represent the given image with the following question:", "What is prohibited in the shade?",
                Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)))
ANSWER = Item("", "parking/standing")  # a text-only MMEB target: no instruction, no image


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {family: str(build_tiny_checkpoint(root / family, family=family)) for family in FAMILIES}


@dataclass
class Special:
    """A special token written out ``count`` times (an image's placeholder expands to its tokens)."""

    token: str
    count: int = 1


def expected_ids(tokenizer, *parts) -> list[int]:
    """The ids of a sequence written as text pieces and special tokens, in order."""
    ids: list[int] = []
    for part in parts:
        if isinstance(part, Special):
            ids += [tokenizer.convert_tokens_to_ids(part.token)] * part.count
        else:
            ids += tokenizer.encode(part, add_special_tokens=False)
    return ids


def encoded(processor, fmt, item: Item) -> tuple[list[int], int]:
    """(the ids the embedder feeds the model, the number of tokens its image expands to)."""
    item = fmt.prepare(item)
    batch = processor(text=[fmt.text(processor, item)], images=item.images() or None,
                      add_special_tokens=fmt.add_special_tokens)
    ids = list(batch["input_ids"][0])
    image_token = getattr(processor, "image_token", "<|image_pad|>")
    return ids, ids.count(processor.tokenizer.convert_tokens_to_ids(image_token))


def test_unime_v2_qwen2vl_is_the_raw_mmeb_text_with_the_image_pad_in_place(families):
    processor = load_processor(families["qwen2_vl"], max_pixels=672 * 672)
    fmt = input_format("unime-v2-qwen2vl")
    ids, image_tokens = encoded(processor, fmt, QUESTION)
    # UniME-v2 Embedding/src/dataset.py:74 turns data/example_data.json:3's
    # "<|image_1|>\nRepresent the given image with the following question: What is prohibited
    # in the shade?\n" into model_utils.py:37's "<|image_pad|>\n...", and model_utils.py:231
    # tokenizes it raw: no chat template, no BOS (Qwen2 has none); dataset.py:24-25 resizes
    # to 672x672 first: 24 x 24 merged patches = 576 image tokens.
    assert image_tokens == 576
    assert ids == expected_ids(processor.tokenizer, Special("<|image_pad|>", 576),
                               "\nRepresent the given image with the following question: What is prohibited in the "
                               "shade?\n")
    # A text-only target is its bare text (TIGER-AI-Lab/VLM2Vec image_qa_dataset.py:26).
    assert encoded(processor, fmt, ANSWER)[0] == expected_ids(processor.tokenizer, "parking/standing")


def test_unime_v2_evaluation_resolution_is_1344_capped_at_1280_tokens(families):
    # UniME-v2 shells/testing_embedding/test_UniMEv2_qwen2VL_2B.sh: IMAGE_RESOLUTION="high";
    # dataset.py:22-23 resizes to 1344x1344; model_utils.py:79-80's processor allows 256 to
    # 1280 merged patches: 1344x1344 -> 980x980, 35 x 35 = 1,225 image tokens.
    processor = load_processor(families["qwen2_vl"], 256 * 28 * 28, 1280 * 28 * 28)
    ids, image_tokens = encoded(processor, input_format("unime-v2-qwen2vl-eval"), QUESTION)
    assert image_tokens == 1225
    assert ids == expected_ids(processor.tokenizer, Special("<|image_pad|>", 1225),
                               "\nRepresent the given image with the following question: What is prohibited in the "
                               "shade?\n")
    # Never chosen by name: the training format is what a UniME-V2 checkpoint resolves to.
    assert input_format("unime-v2-qwen2vl-eval").name_pattern is None


def test_vlm2vec_qwen2vl_keeps_the_processor_pixel_budget(families):
    processor = load_processor(families["qwen2_5_vl"], max_pixels=112 * 112)
    ids, image_tokens = encoded(processor, input_format("vlm2vec-qwen2vl"), QUESTION)
    # TIGER-AI-Lab/VLM2Vec src/data/eval_dataset/image_qa_dataset.py:17-20: image token, "\n",
    # instruction, " ", text, "\n"; processor.py:333 keeps the processor's own resize.
    assert 0 < image_tokens < 576
    assert ids == expected_ids(processor.tokenizer, Special("<|image_pad|>", image_tokens),
                               "\nRepresent the given image with the following question: What is prohibited in the "
                               "shade?\n")


def test_unime_v2_llava_onevision_is_its_chat_template_image_first(families):
    processor = load_processor(families["llava_onevision"])
    ids, image_tokens = encoded(processor, input_format("unime-v2-llava-onevision"), QUESTION)
    # UniME-v2 Embedding/src/model_utils.py:361-390: one user turn of [image, text with
    # "<image>" removed and stripped], processor.apply_chat_template(add_generation_prompt=True);
    # llava-onevision-qwen2-7b-ov-hf's template writes "<|im_start|>user\n<image>\n{text}<|im_end|>\n"
    # and no system turn.
    assert image_tokens > 0
    assert ids == expected_ids(processor.tokenizer, Special("<|im_start|>"), "user\n", Special("<image>", image_tokens),
                               "\nRepresent the given image with the following question: What is prohibited in the "
                               "shade?", Special("<|im_end|>"), "\n", Special("<|im_start|>"), "assistant\n")


def test_vlm2vec_llava_next_starts_with_bos(families):
    processor = load_processor(families["llava_next"])
    ids, image_tokens = encoded(processor, input_format("vlm2vec-llava-next"), QUESTION)
    # TIGER-AI-Lab/VLM2Vec src/model/processor.py:202-253: processor(images=, text=) on
    # "<image>\n{instruction} {text}\n" with the tokenizer's default special tokens: "<s>" first.
    assert image_tokens > 0
    assert ids == expected_ids(processor.tokenizer, Special("<s>"), Special("<image>", image_tokens),
                               "\nRepresent the given image with the following question: What is prohibited in the "
                               "shade?\n")


def test_gme_puts_the_instruction_in_the_system_turn_and_pools_endoftext(families):
    processor = load_processor(families["qwen2_vl"])
    fmt = input_format("gme-qwen2vl")
    ids, image_tokens = encoded(processor, fmt, QUESTION)
    # gme_inference.py:131 (VLM2Vec's copy, src/model/baseline_backbone/gme/):
    # f'<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input_str}<|im_end|>\n'
    # '<|im_start|>assistant\n<|endoftext|>', input_str = vision tokens + text (:126-130).
    tokenizer = processor.tokenizer
    assert ids == expected_ids(tokenizer, Special("<|im_start|>"), "system\nRepresent the given image with the "
                               "following question:", Special("<|im_end|>"), "\n", Special("<|im_start|>"), "user\n",
                               Special("<|vision_start|>"), Special("<|image_pad|>", image_tokens),
                               Special("<|vision_end|>"), "What is prohibited in the shade?", Special("<|im_end|>"),
                               "\n", Special("<|im_start|>"), "assistant\n", Special("<|endoftext|>"))
    # A candidate (no instruction) gets GME's default system prompt (:120-121).
    assert encoded(processor, fmt, ANSWER)[0] == expected_ids(
        tokenizer, Special("<|im_start|>"), "system\nYou are a helpful assistant.", Special("<|im_end|>"), "\n",
        Special("<|im_start|>"), "user\nparking/standing", Special("<|im_end|>"), "\n", Special("<|im_start|>"),
        "assistant\n", Special("<|endoftext|>"))
    assert fmt.pooling == "last" and fmt.normalize  # gme_inference.py:101-112


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_our_chat_format_is_the_qwen_template_with_the_assistant_header(families, family):
    processor = load_processor(families[family])
    ids, image_tokens = encoded(processor, input_format("unime-ray-chat"), QUESTION)
    # Qwen2-VL-Instruct's chat template, as unime_ray.models.tiny.CHAT_TEMPLATE copies it.
    assert ids == expected_ids(processor.tokenizer, Special("<|im_start|>"), "system\nYou are a helpful assistant.",
                               Special("<|im_end|>"), "\n", Special("<|im_start|>"), "user\n",
                               Special("<|vision_start|>"), Special("<|image_pad|>", image_tokens),
                               Special("<|vision_end|>"), "Represent the given image with the following question: "
                               "What is prohibited in the shade?", Special("<|im_end|>"), "\n",
                               Special("<|im_start|>"), "assistant\n")


def test_unime_v2_reranker_prompts_join_their_parts_with_nothing_between(families):
    processor = load_processor(families["qwen2_5_vl"])
    prompts = prompt_format("unime-v2")
    query, candidates = QUESTION, [ANSWER, Item("", "no parking", QUESTION.image)]
    tokens = processor.tokenizer.convert_tokens_to_ids
    image_pad = tokens("<|image_pad|>")

    def ids_of(messages, images, suffix=""):
        batch = processor(text=[render(processor, messages) + suffix], images=images, add_special_tokens=False)
        ids = list(batch["input_ids"][0])
        return ids, ids.count(image_pad)

    head = [Special("<|im_start|>"), "system\nYou are a helpful assistant.", Special("<|im_end|>"), "\n",
            Special("<|im_start|>"), "user\n"]
    tail = [Special("<|im_end|>"), "\n", Special("<|im_start|>"), "assistant\n"]
    question = "Represent the given image with the following question: What is prohibited in the shade?"
    # UniME-v2 Embedding/src/model_utils.py:268-295: [prompt, "Query:", image, text,
    # "Candidate:", image, text], rendered by Qwen2.5-VL's template with nothing between parts.
    ids, n = ids_of(prompts.pair(query, ANSWER), [query.image])
    assert ids == expected_ids(processor.tokenizer, *head, JUDGE_PROMPT + "Query:", Special("<|vision_start|>"),
                               Special("<|image_pad|>", n), Special("<|vision_end|>"),
                               question + "Candidate:parking/standing", *tail)
    # :297-327: "Candidates:", then "(i) " and each candidate's image and text; the answer
    # opens with the training reply's "Ans: (" (Rerank/dataset/datasets_MMEB_rerank.py:76).
    ids, n = ids_of(prompts.listing(query, candidates), listwise_images(query, candidates), ANSWER_PREFIX)
    assert ids == expected_ids(processor.tokenizer, *head, UNIME_V2_LISTWISE_PROMPT + "Query:",
                               Special("<|vision_start|>"), Special("<|image_pad|>", n // 2), Special("<|vision_end|>"),
                               question + "Candidates:(1) parking/standing(2) ", Special("<|vision_start|>"),
                               Special("<|image_pad|>", n // 2), Special("<|vision_end|>"), "no parking", *tail,
                               ANSWER_PREFIX)


# --- resolution ----------------------------------------------------------------------------

def renamed(source: str, tmp_path, name: str) -> str:
    """A copy of a checkpoint under a published checkpoint's name, without our record."""
    target = tmp_path / name
    shutil.copytree(source, target)
    (target / FORMAT_FILE).unlink()
    return str(target)


@pytest.mark.parametrize("family,name,expected", [
    ("qwen2_vl", "UniME-V2-Qwen2VL-2B", "unime-v2-qwen2vl"),
    ("qwen2_vl", "VLM2Vec-Qwen2VL-7B", "vlm2vec-qwen2vl"),
    ("qwen2_vl", "gme-Qwen2-VL-2B-Instruct", "gme-qwen2vl"),
    ("llava_onevision", "UniME-V2-LLaVA-OneVision-8B", "unime-v2-llava-onevision"),
    ("llava_next", "VLM2Vec-LLaVa-Next", "vlm2vec-llava-next"),
    ("llava_onevision", "VLM2Vec-LLaVa-OneVision", "unime-ray-chat"),  # no entry: assumed, with a warning
    ("qwen2_vl", "augmented-segments", "unime-ray-chat"),  # "gme" inside a word is not GME
    ("qwen2_vl", "UniME-V2-runs/checkpoint-500", "unime-ray-chat"),  # only the checkpoint's own name counts
])
def test_a_checkpoint_resolves_by_its_model_type_and_name(families, tmp_path, family, name, expected):
    path = renamed(families[family], tmp_path, name)
    assert resolve_input_format(path).name == expected
    relative = os.path.relpath(path)  # however the path is written
    assert resolve_input_format(relative).name == resolve_input_format(path + "/").name == expected


@pytest.mark.parametrize("config,right,wrong", [
    ("unime_ray.dataplane.config:EmbedConfig", "vlm2vec-qwen2vl", "unime-v2"),
    ("unime_ray.serving.config:EmbedderSettings", "gme-qwen2vl", "unime-ray"),
    ("unime_ray.training.config:TrainEmbedderConfig", "unime-v2-qwen2vl", "unime-ray"),
    ("unime_ray.mining.config:JudgeConfig", "unime-v2", "unime-v2-qwen2vl"),
    ("unime_ray.models.settings:RerankSettings", "unime-ray", "unime-ray-chat"),
    ("unime_ray.training.config:TrainRerankerConfig", "unime-v2", "gme-qwen2vl"),
])
def test_each_config_takes_the_formats_of_its_role_when_parsed(config, right, wrong):
    module, name = config.split(":")
    config_class = getattr(importlib.import_module(module), name)
    assert config_class.model_validate({"format": right}).format == right
    with pytest.raises(ValidationError, match=f"unknown (input|prompt) format '{wrong}'"):
        config_class.model_validate({"format": wrong})


def test_the_embedding_stages_resize_by_the_configured_format(families, tmp_path):
    from unime_ray.data.corpus import TARGET_SCHEMA
    from unime_ray.dataplane.config import EmbedConfig
    from unime_ray.dataplane.embed_stage import EmbedPrepUDF, EmbedUDF, stage_arguments

    # Named like a UniME-V2 checkpoint (672x672 by its name); the config asks for the evaluation
    # format (1344x1344): the CPU stage fits the image as the configured format says.
    path = renamed(families["qwen2_vl"], tmp_path, "UniME-V2-Qwen2VL-2B")
    budget = {"min_pixels": 56 * 56, "max_pixels": 1400 * 1400}
    image = QUESTION.image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    batch = pa.Table.from_pylist([{"id": "q", "image": buffer.getvalue()}], schema=TARGET_SCHEMA)
    sizes = {}
    for fmt in (None, "unime-v2-qwen2vl-eval"):
        # The stages' constructor arguments as embed_dataset passes them to Ray Data.
        prep, embedder = stage_arguments(EmbedConfig(model=path, format=fmt, **budget), None, 1 << 24)
        assert embedder["format"] == fmt
        sizes[fmt] = EmbedPrepUDF(**prep)(batch)["pixels"].to_pylist()[0]
    assert (sizes[None]["height"], sizes[None]["width"]) == (672, 672)
    assert (sizes["unime-v2-qwen2vl-eval"]["height"], sizes["unime-v2-qwen2vl-eval"]["width"]) == (1344, 1344)
    assert EmbedUDF(**embedder).embedder.format.name == "unime-v2-qwen2vl-eval"


def test_an_unknown_checkpoint_warns_naming_what_was_assumed(families, tmp_path, caplog):
    path = renamed(families["qwen2_vl"], tmp_path, "my-finetune")
    with caplog.at_level(logging.WARNING, logger="unime_ray.models.formats"):
        fmt = resolve_input_format(path)
    assert fmt.name == "unime-ray-chat"
    assert "input format unknown" in caplog.text and "'unime-ray-chat'" in caplog.text
    assert "last-token pooling, L2-normalised" in caplog.text
    with caplog.at_level(logging.WARNING, logger="unime_ray.models.formats"):
        caplog.clear()
        resolve_input_format(families["qwen2_vl"])  # our own: recorded, so nothing assumed
    assert caplog.text == ""


def test_the_record_wins_over_the_name_and_the_override_over_both(families, tmp_path, caplog):
    path = renamed(families["qwen2_vl"], tmp_path, "UniME-V2-Qwen2VL-2B")
    record_format(path, input_format("gme-qwen2vl"), prompt_format("unime-v2"))
    assert resolve_input_format(path).name == "gme-qwen2vl"
    assert resolve_input_format(path, "vlm2vec-qwen2vl").name == "vlm2vec-qwen2vl"
    assert [f.name for f in resolve_formats(path, "unime-ray")] == ["gme-qwen2vl", "unime-ray"]
    assert [f.name for f in resolve_formats(path, "vlm2vec-qwen2vl")] == ["vlm2vec-qwen2vl", "unime-v2"]
    with pytest.raises(ValueError, match="unknown format 'chat'"):
        resolve_formats(path, "chat")
    with pytest.raises(ValueError, match="unknown input format 'chat'"):
        resolve_input_format(path, "chat")
    # A record that leaves pooling and normalisation unstated: assumed, and said so.
    record = json.loads((tmp_path / "UniME-V2-Qwen2VL-2B" / FORMAT_FILE).read_text())
    for key in ("pooling", "normalize"):
        del record["embedding"][key]
    (tmp_path / "UniME-V2-Qwen2VL-2B" / FORMAT_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="unime_ray.models.formats"):
        fmt = resolve_input_format(path)
    assert (fmt.pooling, fmt.normalize) == ("last", True)
    assert "does not state pooling or normalize; assumed {'pooling': 'last', 'normalize': True}" in caplog.text


def test_a_recorded_format_reloads_exactly(families, tmp_path):
    custom = input_format("unime-v2-qwen2vl")
    path = renamed(families["qwen2_vl"], tmp_path, "exported")
    record_format(path, custom)
    assert resolve_input_format(path) == custom  # tuples (image_size, model_types) restored


def test_the_published_reranker_gets_unime_v2_prompts(families, tmp_path):
    path = renamed(families["qwen2_5_vl"], tmp_path, "UniME-v2-rerank_qwen25VL_7B")
    assert resolve_prompt_format(path).name == "unime-v2"
    assert resolve_prompt_format(families["qwen2_5_vl"]).name == "unime-ray"


# --- pooling, normalisation, the judge's answer tokens -----------------------------------

def test_mean_and_last_token_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]],
                           [[9.0, 9.0], [2.0, 4.0], [4.0, 0.0]]])  # [2, 3, 2]
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right-padded, then left-padded
    assert mean_pool(hidden, mask).tolist() == [[2.0, 1.0], [3.0, 2.0]]
    assert last_token_pool(hidden, mask).tolist() == [[3.0, 2.0], [4.0, 0.0]]


def test_the_embedder_pools_and_normalises_as_its_format_says(families):
    path = families["qwen2_vl"]
    base = Embedder.from_pretrained(path)
    unnormalised = Embedder(base.processor, base.model,
                            input_format=replace(base.format, normalize=False, pooling="mean"))
    items = [QUESTION, ANSWER]
    vectors = unnormalised.embed(items)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(base.embed(items), axis=1), 1.0)
    assert not np.allclose(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), base.embed(items), atol=1e-3)


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_a_judge_without_single_token_answers_fails_at_start_naming_the_checkpoint(families, tmp_path, backend):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from unime_ray.models.engines.scoring import build_judge

    path = tmp_path / "my-judge"
    shutil.copytree(families["qwen2_vl"], path)
    processor = load_processor(str(path))
    # Every special token kept, the merges dropped: "Yes" is three byte tokens.
    special = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in processor.tokenizer.all_special_tokens}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: len(special) + i for i, c in enumerate(alphabet)} | special, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    processor.tokenizer._tokenizer = core
    processor.save_pretrained(path)
    with pytest.raises(ValueError, match=r"my-judge: its tokenizer splits 'Yes' into 3 tokens"):
        build_judge(backend, model=str(path), kv_cache_gib=1)
    assert yes_no_token_ids(load_processor(families["qwen2_vl"]).tokenizer, "ok") is not None
