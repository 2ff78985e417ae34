"""MMEB-eval task files -> queries, candidate lists and one table of unique items.

A task is ``DIR/{task}.jsonl``, ``DIR/{task}.parquet`` or ``DIR/{task}/*.parquet`` (the
layout of the published MMEB-eval), one query per row:

- ``qry_text``, ``qry_img_path``: the query (``<|image_1|>`` marks its image);
- ``tgt_text``, ``tgt_img_path``: the candidate lists, gold first, "" where absent.

Image paths are relative to the image root. Each task's meta-task comes from
``DIR/tasks.json`` (``{"tasks": {name: meta_task}}``) or, for MMEB's own 36 tasks, from
the table below. A malformed row is rejected with its task, row number and reason, and
the rest of the task is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unime_ray.data.corpus import TARGET_SCHEMA
from unime_ray.data.unime_json import strip_placeholder
from unime_ray.eval.metrics import META_TASKS

logger = logging.getLogger(__name__)

MMEB_META_TASKS = {
    **dict.fromkeys(["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                     "ImageNet-R", "ObjectNet", "Country211"], "classification"),
    **dict.fromkeys(["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
                     "GQA", "TextVQA"], "vqa"),
    **dict.fromkeys(["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                     "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"], "retrieval"),
    **dict.fromkeys(["MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"], "grounding"),
}


@dataclass
class EvalTask:
    name: str
    meta_task: str
    query_ids: list[str] = field(default_factory=list)
    candidate_ids: list[list[str]] = field(default_factory=list)  # per query, gold first
    rows: list[int] = field(default_factory=list)  # each query's row in the task file


@dataclass
class EvalSet:
    tasks: list[EvalTask]
    items: pa.Table  # id, instruction, text, image, image_path: every query and distinct candidate once
    rejects: list[dict]  # table (task), id, row, reason


def task_files(directory: Path) -> dict[str, list[Path]]:
    """Task name -> its file(s), in name order."""
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in (".jsonl", ".parquet"):
            found.setdefault(path.stem, []).append(path)
        elif path.is_dir() and any(path.glob("*.parquet")):
            found.setdefault(path.name, []).extend(sorted(path.glob("*.parquet")))
    return found


def meta_tasks(directory: Path) -> dict[str, str]:
    manifest = directory / "tasks.json"
    declared = json.loads(manifest.read_text())["tasks"] if manifest.exists() else {}
    unknown = {name: meta for name, meta in declared.items() if meta not in META_TASKS}
    if unknown:
        raise ValueError(f"{manifest}: meta-tasks must be among {META_TASKS}, got {unknown}")
    return {**MMEB_META_TASKS, **declared}


def read_rows(files: list[Path]) -> list[dict | Exception]:
    """Rows of a task's files; a JSON line that does not parse becomes its exception."""
    rows: list[dict | Exception] = []
    for path in files:
        if path.suffix == ".parquet":
            rows += pq.read_table(path).to_pylist()
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    rows.append(error)
    return rows


def check_row(row: dict | Exception) -> tuple[str, str, list[tuple[str, str]]]:
    """(query text, query image path, [(text, image path)] candidates); raises ValueError."""
    if isinstance(row, Exception):
        raise ValueError(f"not JSON: {row}")
    texts, images = row.get("tgt_text"), row.get("tgt_img_path")
    if not isinstance(texts, list) or not isinstance(images, list) or not texts:
        raise ValueError("tgt_text and tgt_img_path must be non-empty lists")
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} tgt_text but {len(images)} tgt_img_path")
    query = (strip_placeholder(row.get("qry_text") or ""), row.get("qry_img_path") or "")
    candidates = [(strip_placeholder(t or ""), i or "") for t, i in zip(texts, images)]
    if not any(query):
        raise ValueError("the query has neither text nor image")
    if any(not any(c) for c in candidates):
        raise ValueError("a candidate has neither text nor image")
    return query[0], query[1], candidates


def candidate_id(text: str, image_path: str) -> str:
    """Content id: a label set shared by every query of a task is embedded once."""
    return "c:" + hashlib.sha1(f"{text}\x00{image_path}".encode()).hexdigest()[:16]


def read_tasks(path: str | Path, names: list[str] | None = None, max_queries: int | None = None) -> EvalSet:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tasks directory {directory} not found (build one: python -m unime_ray.eval.build_mini DIR)")
    files, metas = task_files(directory), meta_tasks(directory)
    missing = sorted(set(names or []) - set(files))
    if missing:
        raise ValueError(f"tasks {missing} not in {directory} (found {sorted(files)})")
    tasks, rejects, items = [], [], {}
    for name in names or sorted(files):
        if name not in metas:
            rejects.append({"table": name, "id": None, "row": None,
                            "reason": f"unknown meta-task: declare {name!r} in {directory / 'tasks.json'}"})
            logger.warning("skipping task %s: no meta-task", name)
            continue
        task = EvalTask(name, metas[name])
        for number, row in enumerate(read_rows(files[name])[:max_queries]):
            query_id = f"q:{name}:{number}"
            try:
                text, image_path, candidates = check_row(row)
            except ValueError as error:
                rejects.append({"table": name, "id": query_id, "row": number, "reason": str(error)})
                continue
            items[query_id] = {"id": query_id, "text": text, "image_path": image_path or None}
            ids = []
            for candidate_text, candidate_image in candidates:
                ids.append(candidate_id(candidate_text, candidate_image))
                items.setdefault(ids[-1], {"id": ids[-1], "text": candidate_text, "image_path": candidate_image or None})
            task.query_ids.append(query_id)
            task.candidate_ids.append(ids)
            task.rows.append(number)
        tasks.append(task)
    table = pa.Table.from_pylist(list(items.values()), schema=TARGET_SCHEMA)
    return EvalSet(tasks, table, rejects)
