"""Instruction turns for pretraining a base MLLM generatively, from training splits only.

A labelled training corpus (``labelled_corpus``: easy-VQA's training images, MNIST's
training digits) becomes single-turn conversations, each a list of parts (texts and
image paths, in order) and the answer the model learns to write:

- ``caption``: an image, "Describe the image." -> its caption ("a red circle");
- ``vqa``: an image and one of its questions -> the answer;
- ``digit``: a digit image, "Which digit is this?" -> its name ("seven");
- ``match``: a query and a candidate from the corpus' own tasks (VQA, image->caption,
  caption->image, digit->name), with "Does the candidate suit the query? Answer Yes or
  No." -> "Yes" for its positive, "No" for a random target of the same task whose label
  differs (a same-caption image is not a "No"). The wording is not the judge prompt
  (``formats.JUDGE_PROMPT``), which a pretrained judge then meets for the first time.

Writes ``OUT/instructions.parquet`` (``INSTRUCTION_SCHEMA``) beside the corpus it read
from, whose images the parts' paths point into.

    python -m unime_ray.data.instructions OUT_DIR [--easyvqa-images 2000] [--digits 2000]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.labelled_corpus import LABELS_FILE, build_labelled_corpus

logger = logging.getLogger(__name__)

INSTRUCTIONS_FILE = "instructions.parquet"
PART = pa.struct([pa.field("text", pa.string()), pa.field("image_path", pa.string())])
INSTRUCTION_SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),  # the turn's id (trainers name records by it)
    pa.field("kind", pa.string()), pa.field("parts", pa.list_(PART)), pa.field("answer", pa.string()),
])
DESCRIBE = "Describe the image."
WHICH_DIGIT = "Which digit is this?"
MATCH = "Does the candidate suit the query? Answer Yes or No."


def item_parts(row: dict) -> list[dict]:
    """A corpus row's image, then its instruction and text, as ``Item.content`` orders them."""
    text = " ".join(p for p in ((row.get("instruction") or "").strip(), (row.get("text") or "").strip()) if p)
    return ([{"text": None, "image_path": row["image_path"]}] if row.get("image_path") else []) + \
        ([{"text": text, "image_path": None}] if text else [])


def text_part(text: str) -> dict:
    return {"text": text, "image_path": None}


def generative_turns(query: dict) -> list[dict]:
    """The corpus query's own task as a generative turn, where it has one."""
    image = {"text": None, "image_path": query["image_path"]}
    answer = query["positive_text"]
    if query["dataset"] == "easyvqa_i2t":
        return [{"kind": "caption", "parts": [image, text_part(DESCRIBE)], "answer": answer}]
    if query["dataset"] == "easyvqa_vqa":
        return [{"kind": "vqa", "parts": [image, text_part(query["text"])], "answer": answer}]
    if query["dataset"] == "mnist_cls":
        return [{"kind": "digit", "parts": [image, text_part(WHICH_DIGIT)], "answer": answer}]
    return []


def match_turn(query: dict, candidate: dict, answer: str) -> dict:
    parts = [text_part("Query:"), *item_parts(query), text_part("Candidate:"), *item_parts(candidate),
             text_part(MATCH)]
    return {"kind": "match", "parts": parts, "answer": answer}


def instruction_turns(queries: list[dict], targets: dict[str, dict], labels: dict[str, str],
                      rng: np.random.Generator) -> list[dict]:
    """Every query's generative turn and two match turns (its positive: Yes; a random other
    target of its task with another label: No), numbered in order."""
    by_dataset: dict[str, list[str]] = {}
    for tid, target in targets.items():
        by_dataset.setdefault(target["dataset"], []).append(tid)
    turns = []
    for query in queries:
        positive = targets[query["positive_id"]]
        turns += generative_turns({**query, "positive_text": positive.get("text")})
        turns.append(match_turn(query, positive, "Yes"))
        wanted = labels.get(query["positive_id"], query["positive_id"])
        others = [t for t in by_dataset[positive["dataset"]] if labels.get(t, t) != wanted]
        if others:
            turns.append(match_turn(query, targets[others[rng.integers(len(others))]], "No"))
    return [{"query_id": f"turn:{n}", **turn} for n, turn in enumerate(turns)]


def build_instructions(out_dir: str | Path, easyvqa_images: int = 2000, digits: int = 2000, seed: int = 0) -> Path:
    """A training-split labelled corpus under ``out_dir`` and its instruction turns; returns
    the turns' file."""
    out = build_labelled_corpus(out_dir, "train", easyvqa_images, digits, seed)
    queries = pq.read_table(out / "queries.parquet").to_pylist()
    targets = {t["id"]: t for t in pq.read_table(out / "targets.parquet").to_pylist()}
    labelled = pq.read_table(out / LABELS_FILE)
    labels = dict(zip(labelled["target_id"].to_pylist(), labelled["label"].to_pylist()))
    turns = instruction_turns(queries, targets, labels, np.random.default_rng(seed))
    path = out / INSTRUCTIONS_FILE
    pq.write_table(pa.Table.from_pylist(turns, schema=INSTRUCTION_SCHEMA), path)
    kinds = {kind: sum(t["kind"] == kind for t in turns) for kind in ("caption", "vqa", "digit", "match")}
    logger.info("wrote %d instruction turns %s to %s", len(turns), kinds, path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--easyvqa-images", type=int, default=2000)
    parser.add_argument("--digits", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(build_instructions(args.out_dir, args.easyvqa_images, args.digits, args.seed))


if __name__ == "__main__":
    main()
