"""A labelled corpus from packaged data: easy-VQA's three tasks plus MNIST classification.

Written as a Parquet corpus directory (``queries.parquet``, ``targets.parquet``, the
images under ``images/``) plus ``labels.parquet``: each easy-VQA image target labelled by
its caption, so the images that share "a red circle" are known to answer the same query.
Those caption duplicates stay in: they are the false negatives a judge must find. Mining
with ``judge.labels`` scores pairs from this table.

``split="train"`` draws from easy-VQA's training images and MNIST's training digits only;
``split="test"`` from the held-out ones, which the MMEB-mini evaluates on.

    python -m unime_ray.data.labelled_corpus OUT_DIR --split train [--easyvqa-images 500] [--digits 500]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.corpus import Corpus
from unime_ray.data.easyvqa import build_easyvqa_corpus
from unime_ray.data.mnist import CLASSIFICATION_INSTRUCTION, DIGIT_NAMES, digit_image, load_digits

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.parquet"
LABEL_SCHEMA = pa.schema([pa.field("target_id", pa.string(), nullable=False), pa.field("label", pa.string())])


def _easyvqa_rows(out: Path, split: str, num_images: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(queries, targets, labels) with the images copied under ``out/images/easyvqa``."""
    corpus = build_easyvqa_corpus(num_images, seed, split)
    queries, targets = corpus.queries.to_pylist(), corpus.targets.to_pylist()
    for row in queries + targets:
        if row["image_path"]:
            rel = f"images/easyvqa/{row['image_path']}"
            if not (out / rel).exists():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(corpus.image_root) / row["image_path"], out / rel)
            row["image_path"] = rel
    # A caption-to-image query's text is its image's caption.
    labels = [{"target_id": q["positive_id"], "label": q["text"]} for q in queries if q["dataset"] == "easyvqa_t2i"]
    return queries, targets, labels


def _mnist_rows(out: Path, split: Literal["train", "test"], num_digits: int,
                seed: int) -> tuple[list[dict], list[dict]]:
    """Digit image -> its name, over ``num_digits`` seeded digits of the split."""
    digits = load_digits(split)
    chosen = np.sort(np.random.default_rng(seed).choice(len(digits.labels), num_digits, replace=False))
    (out / "images" / "mnist").mkdir(parents=True, exist_ok=True)
    queries = []
    for i in chosen:
        rel = f"images/mnist/{digits.index[i]:06d}.png"
        digit_image(digits.pixels[i]).save(out / rel)
        queries.append({"id": f"mnist:{digits.index[i]}", "dataset": "mnist_cls",
                        "instruction": CLASSIFICATION_INSTRUCTION, "image_path": rel,
                        "positive_id": f"digit:{DIGIT_NAMES[digits.labels[i]]}"})
    targets = [{"id": f"digit:{name}", "dataset": "mnist_cls", "text": name} for name in DIGIT_NAMES]
    return queries, targets


def build_labelled_corpus(out_dir: str | Path, split: Literal["train", "test"] = "train", easyvqa_images: int = 500,
                          digits: int = 500, seed: int = 0) -> Path:
    """Write the corpus and its labels under ``out_dir``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries, targets, labels = _easyvqa_rows(out, split, easyvqa_images, seed)
    if digits:
        more_queries, more_targets = _mnist_rows(out, split, digits, seed)
        queries, targets = queries + more_queries, targets + more_targets
    Corpus(pa.Table.from_pylist(queries), pa.Table.from_pylist(targets), str(out)).save(out)
    pq.write_table(pa.Table.from_pylist(labels, schema=LABEL_SCHEMA), out / LABELS_FILE)
    logger.info("wrote a labelled %s corpus of %d queries and %d targets (%d labelled) to %s",
                split, len(queries), len(targets), len(labels), out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--easyvqa-images", type=int, default=500, help="easy-VQA images (3 queries each)")
    parser.add_argument("--digits", type=int, default=500, help="MNIST digits (a classification query each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_labelled_corpus(args.out_dir, args.split, args.easyvqa_images, args.digits, args.seed)


if __name__ == "__main__":
    main()
