"""Input formats: how each model family was trained to read an item, as a small registry.

A published embedder was trained on one exact input: UniME-V2 and VLM2Vec give Qwen2-VL
the raw instruction text with the image token in place of ``<|image_1|>`` and no chat
template, and pool its last token; GME wraps the same model's input in its chat
template; our own checkpoints use the chat template with the assistant header. Fed
another format, a published embedder gives embeddings of unknown quality, and nothing
downstream would notice. So every embedder resolves an ``InputFormat`` when it loads:

1. ``format=`` in the job's config, by name;
2. else the format recorded in the model directory (``FORMAT_FILE``: our tiny and
   exported checkpoints write it, so reloading one is exact);
3. else the first registry entry whose model types and name pattern match the
   checkpoint's ``config.model_type`` and its own name (a hub id's repository, a local
   directory's last component: ``UniME-V2-Qwen2VL-2B``, ``VLM2Vec-Qwen2VL-7B``);
4. else our chat format, with a warning naming what was assumed.

Judges and rerankers resolve a ``PromptFormat`` the same way: the wording and layout of
the pairwise (Yes/No) and listwise prompts.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

from PIL import Image

from unime_ray.models.inputs import Item, join_text, render, user_turn

logger = logging.getLogger(__name__)

FORMAT_FILE = "unime_format.json"  # {"embedding": InputFormat fields, "prompts": PromptFormat name}
Pooling = Literal["last", "mean", "latent_attention"]


@dataclass(frozen=True)
class InputFormat:
    """How an (instruction, text, image) item becomes an embedder's input and its vector."""

    name: str
    # chat: the processor's chat template renders a user turn (images as content parts);
    # raw: the text itself, with ``image_token`` standing for the image.
    template: Literal["chat", "raw"]
    image_token: str = ""  # raw: the placeholder the processor expands into the image's tokens
    image_separator: str = "\n"  # raw: between the placeholder and the text
    instruction_suffix: str = ""  # raw: ends an item that has an instruction (MMEB V1: "\n")
    instruction_as_system: bool = False  # chat: the instruction is the system turn (GME)
    generation_prompt: bool = True  # chat: end with the assistant header
    # The tokenizer's own BOS/EOS on encode (LLaVA-NeXT's "<s>"); chat templates write theirs.
    add_special_tokens: bool = True
    suffix: str = ""  # appended to the text (GME: "<|endoftext|>", whose state is pooled)
    # last: the last real token (UniME-V2's "last"/"eos"); mean: over real tokens;
    # latent_attention: NV-Embed's trained layer (``pooling.LatentAttentionPooling``)
    pooling: Pooling = "last"
    normalize: bool = True  # L2-normalise the vector
    bidirectional: bool = False  # NV-Embed: no causal mask in the language model
    latents: int = 512  # latent_attention: the latent array's rows (NV-Embed: 512)
    latent_heads: int = 8  # latent_attention: attention heads (NV-Embed: 8)
    image_size: tuple[int, int] | None = None  # every image resized to (width, height) first
    model_types: tuple[str, ...] = ()  # config.model_type values it serves; () any
    name_pattern: str | None = None  # regex on the checkpoint's name (``checkpoint_name``); None: any
    source: str = ""  # where the reference code does this

    def text(self, processor, item: Item) -> str:
        """The string the processor tokenizes for ``item`` (images expand in place)."""
        if self.template == "raw":
            placeholder = self.image_token + self.image_separator if item.image is not None else ""
            ending = self.instruction_suffix if item.instruction.strip() else ""
            return placeholder + join_text(item.instruction, item.text) + ending + self.suffix
        if self.instruction_as_system:
            content = Item("", item.text, item.image).content()
            messages = [{"role": "system", "content": [{"type": "text", "text": item.instruction.strip()}]},
                        *user_turn(content)] if item.instruction.strip() else user_turn(content)
        else:
            messages = user_turn(item.content())
        return render(processor, messages, self.generation_prompt) + self.suffix

    def resize(self, image: Image.Image | None) -> Image.Image | None:
        """The image at the format's fixed size (as the reference resizes on load)."""
        if image is None or self.image_size is None or image.size == self.image_size:
            return image
        return image.resize(self.image_size)

    def prepare(self, item: Item) -> Item:
        return item if item.image is None else Item(item.instruction, item.text, self.resize(item.image))

    def matches(self, model_type: str | None, model: str | Path) -> bool:
        return ((not self.model_types or model_type in self.model_types)
                and (self.name_pattern is None or name_matches(self.name_pattern, model)))

    def record(self) -> dict:
        return asdict(self)


def checkpoint_name(model: str | Path) -> str:
    """A checkpoint's own name: a hub id's repository, a local directory's last component (so
    that the directories above it, and how its path is written, never change its format)."""
    return Path(str(model).rstrip("/")).name


def name_matches(pattern: str, model: str | Path) -> bool:
    return re.match(pattern, checkpoint_name(model), re.IGNORECASE) is not None


QWEN_VL = ("qwen2_vl", "qwen2_5_vl")
# Matching order: the published checkpoints by name first, our chat format last.
INPUT_FORMATS: tuple[InputFormat, ...] = (
    # UniME-V2 Embedding/src/dataset.py:74 replaces "<|image_1|>" by model_utils.py:37's
    # "<|image_pad|>"; model_utils.py:231 calls the processor on that raw text; model.py:50-61
    # pools the last real token; shells/training/train_qwen2vl.sh:29 image_resolution=mid,
    # dataset.py:24-25 resizes to 672x672; the eval scripts pass --normalize True. MMEB's
    # texts with an instruction end in "\n" (data/example_data.json:3).
    InputFormat("unime-v2-qwen2vl", "raw", image_token="<|image_pad|>", instruction_suffix="\n",
                image_size=(672, 672), model_types=QWEN_VL, name_pattern=r"unime[-_]?v2[-_]",
                source="GaryGuTC/UniME-v2 Embedding/src/model_utils.py:213-262"),
    # The same at UniME-V2's evaluation resolution: shells/testing_embedding/*.sh pass
    # IMAGE_RESOLUTION="high", dataset.py:22-23 resizes to 1344x1344, and model_utils.py:79's
    # processor caps an image at 1280 tokens (pass max_pixels=1280*28*28 with it). By name only.
    InputFormat("unime-v2-qwen2vl-eval", "raw", image_token="<|image_pad|>", instruction_suffix="\n",
                image_size=(1344, 1344), model_types=QWEN_VL,
                source="GaryGuTC/UniME-v2 Embedding/shells/testing_embedding/test_UniMEv2_qwen2VL_2B.sh"),
    # model_utils.py:361-390: the LLaVA-OneVision processor's chat template, the image first,
    # the text with "<image>" removed, the assistant header; train_llavaOV.sh:31 mid_336.
    InputFormat("unime-v2-llava-onevision", "chat", image_size=(336, 336), model_types=("llava_onevision",),
                name_pattern=r"unime[-_]?v2[-_]", source="GaryGuTC/UniME-v2 Embedding/src/model_utils.py:361-390"),
    # VLM2Vec's Qwen2-VL: the same raw text and pooling (src/model/processor.py:302-374,
    # "<|image_pad|>" at :62), "\n" after an instruction "to stay consistent with v1 eval"
    # (src/data/eval_dataset/image_qa_dataset.py:20); the processor's own pixel budget.
    InputFormat("vlm2vec-qwen2vl", "raw", image_token="<|image_pad|>", instruction_suffix="\n", model_types=QWEN_VL,
                name_pattern=r"vlm2vec[-_]", source="TIGER-AI-Lab/VLM2Vec src/model/processor.py:302-374"),
    # LLaVA-NeXT (VLM2Vec, UniME-V1): the same with "<image>", the tokenizer's "<s>" first
    # (processor.py:202-253 calls the processor with its default special tokens).
    InputFormat("vlm2vec-llava-next", "raw", image_token="<image>", instruction_suffix="\n",
                model_types=("llava_next",), name_pattern=r"(vlm2vec|unime)[-_]",
                source="TIGER-AI-Lab/VLM2Vec src/model/processor.py:202-253"),
    # GME (gme_inference.py:115-131 in VLM2Vec's copy, src/model/baseline_backbone/gme/): the
    # instruction as the system turn (default: the template's "You are a helpful assistant."),
    # image then text as the user turn, the assistant header, then "<|endoftext|>", pooled.
    InputFormat("gme-qwen2vl", "chat", instruction_as_system=True, add_special_tokens=False, suffix="<|endoftext|>",
                model_types=QWEN_VL, name_pattern=r"gme[-_]", source="Alibaba-NLP/gme-Qwen2-VL-2B-Instruct gme_inference.py"),
    # Ours: the checkpoint's chat template, one user turn, the assistant header.
    InputFormat("unime-ray-chat", "chat", add_special_tokens=False, source="unime_ray.models.formats"),
)
INPUT_FORMATS_BY_NAME = {f.name: f for f in INPUT_FORMATS}
DEFAULT_INPUT_FORMAT = INPUT_FORMATS_BY_NAME["unime-ray-chat"]


def _named(registry: dict, name: str, kind: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {sorted(registry)}")
    return registry[name]


def input_format(name: str) -> InputFormat:
    return _named(INPUT_FORMATS_BY_NAME, name, "input format")


# --- judge and reranker prompts ------------------------------------------------------------

JUDGE_PROMPT = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate "
    "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, "
    "respond with 'No'."
)
LISTWISE_PROMPT = (
    "I will provide you with a query and {n} candidates. Please identify the candidate that best meets the "
    "requirements of the query, and respond with its number in the form 'Ans: (i)'."
)
# UniME-V2 Embedding/src/model_utils.py:302 (the reranker's listwise prompt at evaluation).
UNIME_V2_LISTWISE_PROMPT = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, etc. "
    "Each candidate is independent of the others. Evaluate each candidate against the query, and respond with "
    "the number corresponding to the candidate that best meets the requirements of the query."
)


def unime_ray_pair(query: Item, candidate: Item) -> list[dict]:
    """The judge prompt with the query's and candidate's text and images in place. The
    query comes before the candidate, so all pairs of one query share a prefix that the
    engine's prefix cache reuses."""
    content = [{"type": "text", "text": JUDGE_PROMPT + "\nQuery: "}, *query.content()]
    content += [{"type": "text", "text": "\nCandidate: "}, *candidate.content()]
    return user_turn(content)


def unime_ray_list(query: Item, candidates: Sequence[Item]) -> list[dict]:
    """The query, then the candidates numbered (1) to (n), texts and images in place."""
    content = [{"type": "text", "text": LISTWISE_PROMPT.format(n=len(candidates)) + "\nQuery: "}, *query.content()]
    for number, candidate in enumerate(candidates, start=1):
        content += [{"type": "text", "text": f"\nCandidate ({number}): "}, *candidate.content()]
    return user_turn(content)


def _image_then_text(item: Item) -> list[dict]:
    """UniME-V2's order within a query or candidate: its image, then its text (the
    instruction and text as MMEB joins them, image placeholders removed)."""
    text = join_text(item.instruction, item.text)
    return [{"type": "image"}] * (item.image is not None) + ([{"type": "text", "text": text}] if text else [])


def unime_v2_pair(query: Item, candidate: Item) -> list[dict]:
    """UniME-V2 Embedding/src/model_utils.py:268-295: the prompt, "Query:", the query's
    image and text, "Candidate:", the candidate's; the template joins the parts with
    nothing in between."""
    return user_turn([{"type": "text", "text": JUDGE_PROMPT}, {"type": "text", "text": "Query:"},
                      *_image_then_text(query), {"type": "text", "text": "Candidate:"},
                      *_image_then_text(candidate)])


def unime_v2_list(query: Item, candidates: Sequence[Item]) -> list[dict]:
    """UniME-V2 Embedding/src/model_utils.py:297-327: "Candidates:", then "(i) " and each
    candidate's image and text."""
    content = [{"type": "text", "text": UNIME_V2_LISTWISE_PROMPT}, {"type": "text", "text": "Query:"},
               *_image_then_text(query), {"type": "text", "text": "Candidates:"}]
    for number, candidate in enumerate(candidates, start=1):
        content += [{"type": "text", "text": f"({number}) "}, *_image_then_text(candidate)]
    return user_turn(content)


@dataclass(frozen=True)
class PromptFormat:
    """A judge's or reranker's prompts: (query, candidate) -> messages answered "Yes"/"No",
    (query, candidates) -> messages answered "Ans: (i)". Images appear in the order of
    the query's then the candidates' (``Item.images``)."""

    name: str
    pair: Callable[[Item, Item], list[dict]]
    listing: Callable[[Item, Sequence[Item]], list[dict]]
    name_pattern: str | None = None
    source: str = ""


PROMPT_FORMATS: tuple[PromptFormat, ...] = (
    PromptFormat("unime-v2", unime_v2_pair, unime_v2_list, name_pattern=r"unime[-_]?v2[-_].*rerank",
                 source="GaryGuTC/UniME-v2 Embedding/src/model_utils.py:268-327 (the reranker's evaluation)"),
    PromptFormat("unime-ray", unime_ray_pair, unime_ray_list, source="unime_ray.models.formats"),
)
PROMPT_FORMATS_BY_NAME = {f.name: f for f in PROMPT_FORMATS}
DEFAULT_PROMPT_FORMAT = PROMPT_FORMATS_BY_NAME["unime-ray"]


def prompt_format(name: str) -> PromptFormat:
    return _named(PROMPT_FORMATS_BY_NAME, name, "prompt format")


# --- resolution ----------------------------------------------------------------------------

def read_record(model: str | Path) -> dict:
    """The format record of a local model directory ({} when there is none)."""
    path = Path(model) / FORMAT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_format(model_dir: str | Path, embedding: InputFormat = DEFAULT_INPUT_FORMAT,
                  prompts: PromptFormat = DEFAULT_PROMPT_FORMAT) -> Path:
    """Write the formats a model directory is read with, so that reloading it is exact."""
    path = Path(model_dir) / FORMAT_FILE
    path.write_text(json.dumps({"embedding": embedding.record(), "prompts": prompts.name}, indent=2) + "\n")
    return path


def model_type(model: str | Path) -> str | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(str(model)), "model_type", None)


def _from_record(model: str | Path, recorded: dict) -> InputFormat:
    known = {f.name for f in fields(InputFormat)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise ValueError(f"{Path(model) / FORMAT_FILE}: unknown input format fields {unknown}")
    assumed = {key: getattr(DEFAULT_INPUT_FORMAT, key) for key in ("pooling", "normalize") if key not in recorded}
    if assumed:
        logger.warning("%s: the recorded input format %r does not state %s; assumed %s", model,
                       recorded.get("name"), " or ".join(assumed), assumed)
    values = dict(recorded)
    for key in ("image_size", "model_types"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return InputFormat(**values)


def resolve_input_format(model: str | Path, name: str | None = None, pooling: Pooling | None = None,
                         bidirectional: bool | None = None) -> InputFormat:
    """The embedder's input format: ``name``, else the directory's record, else the first
    registry match, else our chat format (with a warning naming the assumption); then
    ``pooling`` and ``bidirectional``, where given, replace the format's."""
    changes = {key: value for key, value in (("pooling", pooling), ("bidirectional", bidirectional))
               if value is not None}
    return replace(_resolve_input_format(model, name), **changes)


def _resolve_input_format(model: str | Path, name: str | None) -> InputFormat:
    if name is not None:
        return input_format(name)
    recorded = read_record(model).get("embedding")
    if recorded is not None:
        return _from_record(model, recorded)
    kind = model_type(model)
    for candidate in INPUT_FORMATS:
        if candidate.name_pattern is not None and candidate.matches(kind, str(model)):
            logger.info("%s (%s): input format %r (%s)", model, kind, candidate.name, candidate.source)
            return candidate
    logger.warning("%s (%s): input format unknown (no %s, no published checkpoint's name); assumed %r: the "
                   "chat template with the assistant header, last-token pooling, L2-normalised. Set format= to "
                   "choose one of %s", model, kind, FORMAT_FILE, DEFAULT_INPUT_FORMAT.name,
                   sorted(INPUT_FORMATS_BY_NAME))
    return DEFAULT_INPUT_FORMAT


def resolve_prompt_format(model: str | Path, name: str | None = None) -> PromptFormat:
    """A judge's or reranker's prompts: ``name``, else the directory's record, else a
    published checkpoint's by name, else ours."""
    if name is not None:
        return prompt_format(name)
    recorded = read_record(model).get("prompts")
    if recorded is not None:
        return prompt_format(recorded)
    for candidate in PROMPT_FORMATS:
        if candidate.name_pattern is not None and name_matches(candidate.name_pattern, model):
            return candidate
    return DEFAULT_PROMPT_FORMAT


def resolve_formats(model: str | Path, name: str | None = None, pooling: Pooling | None = None,
                    bidirectional: bool | None = None) -> tuple[InputFormat, PromptFormat]:
    """Both of a checkpoint's formats, ``name`` choosing the one of whichever kind it names
    (``pooling``, ``bidirectional``: changes to the input format)."""
    if name is not None and name not in INPUT_FORMATS_BY_NAME and name not in PROMPT_FORMATS_BY_NAME:
        raise ValueError(f"unknown format {name!r}; choose from {sorted(INPUT_FORMATS_BY_NAME)} "
                         f"or {sorted(PROMPT_FORMATS_BY_NAME)}")
    embedding = name if name in INPUT_FORMATS_BY_NAME else None
    prompts = name if name in PROMPT_FORMATS_BY_NAME else None
    return resolve_input_format(model, embedding, pooling, bidirectional), resolve_prompt_format(model, prompts)
