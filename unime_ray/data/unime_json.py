"""UniME-V2 / MMEB-train JSON records: reading them as a corpus, writing mined records.

A record is ``query_text``, ``query_image``, ``pos_text``, ``pos_image`` (image paths
relative to the MMEB-train root), and in mined files ``query_pos_scores``,
``hard_negatives`` ([text, image] pairs) and ``hard_negatives_scores``. Texts carry an
``<|image_1|>`` placeholder where the image goes; we drop it from the text and put the
image into the chat content, so each model's own template inserts its own image token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA, Corpus

IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")


def strip_placeholder(text: str) -> str:
    return IMAGE_PLACEHOLDER.sub("", text or "").strip()


def format_text(text: str, has_image: bool) -> str:
    """Our (instruction + text) string in UniME-V2's form, placeholder first."""
    return ("<|image_1|>\n" if has_image else "") + text + "\n"


def _target_id(text: str, image: str) -> str:
    return "t:" + hashlib.sha1(f"{text}\x00{image}".encode()).hexdigest()[:16]


def _record_problem(record) -> str | None:
    """Why a JSON record cannot be read, or None."""
    if not isinstance(record, dict):
        return f"record is a {type(record).__name__}, not an object"
    missing = sorted({"query_text", "pos_text"} - record.keys())
    if missing:
        return f"record lacks {missing}"
    for key in ("query_text", "pos_text", "query_image", "pos_image"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"{key} is not a string"
    negatives = record.get("hard_negatives") or []
    if not isinstance(negatives, list) or not all(
            isinstance(n, list) and len(n) == 2 and all(isinstance(x, (str, type(None))) for x in n) for n in negatives):
        return "hard_negatives is not a list of [text, image] pairs"
    return None


def read_unime_json(path: str | Path, image_root: str | None = None) -> Corpus:
    """Records -> corpus. Positives and any listed hard negatives become targets
    (deduplicated by content), so re-mining a published file searches the same pool.
    A malformed record goes to ``corpus.rejects`` with its reason; the rest are read."""
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    targets: dict[str, dict] = {}
    queries = []

    def add_target(text: str, image: str) -> str:
        tid = _target_id(text, image)
        targets.setdefault(tid, {"id": tid, "dataset": "unime_json", "text": strip_placeholder(text),
                                 "image_path": image or None})
        return tid

    rejects = []
    for row, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            rejects.append({"table": "queries", "id": f"q{row}", "row": row, "reason": problem})
            continue
        positive = add_target(record["pos_text"], record.get("pos_image") or "")
        for text, image in record.get("hard_negatives") or []:
            add_target(text, image or "")
        queries.append({
            "id": f"q{row}",
            "dataset": "unime_json",
            "text": strip_placeholder(record["query_text"]),
            "image_path": record.get("query_image") or None,
            "positive_id": positive,
        })
    return Corpus(
        pa.Table.from_pylist(queries, schema=QUERY_SCHEMA),
        pa.Table.from_pylist(list(targets.values()), schema=TARGET_SCHEMA),
        image_root,
        rejects,
    )


def unime_record(r: dict) -> dict:
    """One mined record (our Parquet layout) in UniME-V2's JSON layout."""
    from unime_ray.models.inputs import join_text

    return {
        "query_text": format_text(join_text(r["query_instruction"], r["query_text"]), bool(r["query_image"])),
        "query_image": r["query_image"] or "",
        "pos_text": format_text(join_text(r["pos_instruction"], r["pos_text"]), bool(r["pos_image"])),
        "pos_image": r["pos_image"] or "",
        "query_pos_scores": r["query_pos_score"],
        "hard_negatives": [
            [format_text(join_text(i, t), bool(im)), im or ""]
            for i, t, im in zip(r["neg_instructions"], r["neg_texts"], r["neg_images"])
        ],
        "hard_negatives_scores": r["neg_scores"],
    }


def _write_fragment(batch: pa.Table, directory: str) -> pa.Table:
    """A block's records as the comma-separated elements of a JSON array, in a file of its own."""
    path = Path(directory) / f"{uuid.uuid4().hex}.part"
    path.write_text(",\n".join(json.dumps(unime_record(r), indent=1) for r in batch.to_pylist()))
    return pa.table({"path": [str(path)], "records": [batch.num_rows]})


def write_unime_json(mined, path: str | Path) -> int:
    """Mined records (a Ray Dataset of our Parquet layout) -> one JSON array in UniME-V2's
    layout. Workers write each block's part; the parts are then concatenated file to file,
    so no process holds more than a block. Returns the number of records."""
    path = Path(path)
    parts_dir = path.with_name(path.name + ".parts")
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    parts = [row for row in mined.map_batches(_write_fragment, fn_kwargs={"directory": str(parts_dir)},
                                              batch_format="pyarrow", num_cpus=0.25).take_all() if row["records"]]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as out:
        out.write("[\n")
        for number, part in enumerate(parts):
            if number:
                out.write(",\n")
            with open(part["path"]) as piece:
                shutil.copyfileobj(piece, out)
        out.write("\n]\n")
    os.replace(tmp, path)
    shutil.rmtree(parts_dir)
    return sum(part["records"] for part in parts)
