"""MMEB-eval task files -> one row per query, with its candidate list.

A task is ``DIR/{task}.jsonl``, ``DIR/{task}.parquet`` or ``DIR/{task}/*.parquet`` (the
layout of the published MMEB-eval), one query per row:

- ``qry_text``, ``qry_img_path``: the query (``<|image_1|>`` marks its image);
- ``tgt_text``, ``tgt_img_path``: the candidate lists, gold first, "" where absent.

Image paths are relative to the image root. Each task's meta-task comes from
``DIR/tasks.json`` (``{"tasks": {name: meta_task}}``) or, for MMEB's own 36 tasks, from
the table below; any other task is evaluated under ``other``, with a warning. A malformed
row is rejected with its task, row number and reason, and the rest of the task is
evaluated.

The driver only plans (``plan_tasks``: names, meta-tasks, files). Each task is then read
by one Ray Data task (``read_queries``): its rows are numbered across its files, so one
task's files stay with one reader; nothing of a task reaches the driver.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


QUERY_SCHEMA = pa.schema([
    pa.field("task", pa.string()), pa.field("meta_task", pa.string()), pa.field("row", pa.int64()),
    pa.field("id", pa.string()), pa.field("text", pa.string()), pa.field("image_path", pa.string()),
    # Gold first, in the file's order; ids are content ids (``candidate_id``).
    pa.field("candidate_ids", pa.list_(pa.string())), pa.field("candidate_texts", pa.list_(pa.string())),
    pa.field("candidate_image_paths", pa.list_(pa.string())),
    pa.field("error", pa.string()),  # why the row is malformed; then the candidate columns are null
])


def plan_tasks(path: str | Path, names: list[str] | None = None) -> list[dict]:
    """The tasks to read: ``task``, ``meta_task``, ``files``. Per task, so small: the
    driver makes it. No task to read is an error that says why."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tasks directory {directory} not found (build one: python -m unime_ray.eval.build_mini DIR)")
    files, metas = task_files(directory), meta_tasks(directory)
    if not files:
        raise ValueError(f"no task to evaluate in {directory}: a task is {{name}}.jsonl, {{name}}.parquet "
                         "or a folder of Parquet files")
    missing = sorted(set(names or []) - set(files))
    if missing:
        raise ValueError(f"tasks {missing} not in {directory} (found {sorted(files)})")
    tasks = []
    for name in names or sorted(files):
        if name not in metas:
            logger.warning("task %s has no meta-task: evaluated under 'other' (declare it in %s)", name,
                           directory / "tasks.json")
        tasks.append({"task": name, "meta_task": metas.get(name, "other"), "files": [str(f) for f in files[name]]})
    return tasks


def query_rows(task: dict, max_queries: int | None = None) -> pa.Table:
    """One planned task's file rows -> one ``QUERY_SCHEMA`` row per query; a malformed row
    keeps its number and says why in ``error``."""
    rows = []
    for number, row in enumerate(read_rows([Path(f) for f in task["files"]])[:max_queries]):
        query = {"task": task["task"], "meta_task": task["meta_task"], "row": number,
                 "id": f"q:{task['task']}:{number}"}
        try:
            text, image_path, candidates = check_row(row)
        except ValueError as error:
            rows.append({**query, "error": str(error)})
            continue
        rows.append({**query, "text": text, "image_path": image_path or None,
                     "candidate_ids": [candidate_id(t, i) for t, i in candidates],
                     "candidate_texts": [t for t, _ in candidates],
                     "candidate_image_paths": [i for _, i in candidates]})
    return pa.Table.from_pylist(rows, schema=QUERY_SCHEMA)


def _read_batch(batch: pa.Table, max_queries: int | None) -> pa.Table:
    tables = [query_rows(task, max_queries) for task in batch.to_pylist()]
    return pa.concat_tables(tables) if tables else QUERY_SCHEMA.empty_table()


def read_queries(tasks: list[dict], max_queries: int | None = None):
    """The planned tasks' query rows (``QUERY_SCHEMA``) as a Dataset, one read task per task."""
    import ray.data

    if not tasks:
        return ray.data.from_arrow(QUERY_SCHEMA.empty_table())
    return ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        _read_batch, fn_kwargs={"max_queries": max_queries}, batch_size=1, batch_format="pyarrow")
