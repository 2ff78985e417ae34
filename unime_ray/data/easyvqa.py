"""The embedded default corpus, built from the real easy-VQA data shipped on PyPI.

Three tasks over the same images, every query a real row of that data:

- ``easyvqa_vqa``: image + one of its real questions -> the answer text;
- ``easyvqa_i2t``: image -> its caption ("a blue rectangle"), built from its labels;
- ``easyvqa_t2i``: caption -> the image.

Targets are shared across tasks (13 answers, up to 24 captions, the images), so one
query's candidates come from the whole corpus, as UniME-V2's global retrieval expects.
Several images share a caption: exactly the false negatives the judge is for.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict

import pyarrow as pa

from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA, Corpus

SHAPES = {"circle", "rectangle", "triangle"}
VQA_INSTRUCTION = "Represent the given image with the following question:"
I2T_INSTRUCTION = "Find a caption for the given image."
T2I_INSTRUCTION = "Find me an everyday image that matches the given caption:"
IMAGE_TARGET_INSTRUCTION = "Represent the given image."


def image_labels(questions, answers, image_ids) -> dict[int, tuple[str, str]]:
    """(colour, shape) of each image, read off its own "what ..." questions."""
    colour, shape = {}, {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        if question.startswith("what color"):
            colour[image_id] = answer
        elif question.startswith("what") and answer in SHAPES:
            shape[image_id] = answer
    return {i: (colour[i], shape[i]) for i in colour.keys() & shape.keys()}


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def build_easyvqa_corpus(num_images: int = 40, seed: int = 0, split: str = "train") -> Corpus:
    """A corpus over ``num_images`` seeded-random easy-VQA images (paths under the package)."""
    import easy_vqa

    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    labels = image_labels(questions, answers, image_ids)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(sorted(labels), min(num_images, len(labels))))
    by_image = defaultdict(list)
    for question, answer, image_id in zip(questions, answers, image_ids):
        by_image[image_id].append((question, answer))
    image_root = os.path.commonpath([paths[i] for i in chosen] + [paths[next(iter(paths))]])

    targets: dict[str, dict] = {}
    queries: list[dict] = []

    def target(tid: str, **row) -> str:
        targets.setdefault(tid, {"id": tid, "dataset": row.pop("dataset"), **row})
        return tid

    for image_id in chosen:
        rel = os.path.relpath(paths[image_id], image_root)
        cap = caption(*labels[image_id])
        image_tid = target(f"img:{image_id}", dataset="easyvqa_t2i", instruction=IMAGE_TARGET_INSTRUCTION, image_path=rel)
        caption_tid = target(f"cap:{cap}", dataset="easyvqa_i2t", text=cap)
        question, answer = rng.choice(by_image[image_id])
        answer_tid = target(f"ans:{answer}", dataset="easyvqa_vqa", text=answer)
        queries += [
            {"id": f"vqa:{image_id}", "dataset": "easyvqa_vqa", "instruction": VQA_INSTRUCTION,
             "text": question, "image_path": rel, "positive_id": answer_tid},
            {"id": f"i2t:{image_id}", "dataset": "easyvqa_i2t", "instruction": I2T_INSTRUCTION,
             "image_path": rel, "positive_id": caption_tid},
            {"id": f"t2i:{image_id}", "dataset": "easyvqa_t2i", "instruction": T2I_INSTRUCTION,
             "text": cap, "positive_id": image_tid},
        ]
    return Corpus(
        pa.Table.from_pylist(queries, schema=QUERY_SCHEMA),
        pa.Table.from_pylist(list(targets.values()), schema=TARGET_SCHEMA),
        image_root,
    )
