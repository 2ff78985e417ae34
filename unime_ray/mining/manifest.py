"""Stage bookkeeping: each stage writes into its own directory, then is recorded as done.

A stage's output is built in a temporary directory and renamed into place, and the
manifest is replaced atomically, so a job killed at any point leaves every recorded
stage complete. A rerun skips recorded stages whose fingerprint (a hash of the config
they depend on and of their inputs' fingerprints) still matches. A resumable stage
(one that checkpoints rows) keeps its temporary directory when a rerun has the same
fingerprint, and goes on from what it holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from unime_ray import metrics

logger = logging.getLogger(__name__)

PARTIAL_FINGERPRINT = "FINGERPRINT"  # in a stage's temporary directory: whose rows it holds


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path_signature(path: str | None) -> list:
    """What identifies a local file's or directory's current content cheaply: the name,
    size and modification time of each file (a re-exported model at the same path, or
    an edited corpus, changes it). Anything else (a hub id, None) is taken as given."""
    if not path or not Path(path).exists():
        return [path]
    root = Path(path)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    return [[str(f.relative_to(root) if f != root else f.name), f.stat().st_size, f.stat().st_mtime_ns]
            for f in files]


class Manifest:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)
        self.path = self.root / "manifest.json"
        self.stages: dict[str, dict] = {}
        if self.path.exists():
            self.stages = json.loads(self.path.read_text()).get("stages", {})

    def stage_dir(self, name: str) -> Path:
        return self.root / "stages" / name

    def is_done(self, name: str, print_: str) -> bool:
        entry = self.stages.get(name)
        return bool(entry) and entry["fingerprint"] == print_ and self.stage_dir(name).exists()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=1))
        os.replace(tmp, self.path)

    def run(self, name: str, print_: str, build: Callable[[Path], dict | None], resumable: bool = False) -> dict:
        """Run ``build(tmp_dir)`` unless ``name`` is done; returns the stage's info dict."""
        if self.is_done(name, print_):
            logger.info("stage %s: already complete, skipped", name)
            return self.stages[name].get("info", {})
        final, tmp = self.stage_dir(name), self.stage_dir(name + ".partial")
        stamp = tmp / PARTIAL_FINGERPRINT
        if final.is_symlink():  # another run's stage (``reuse_stages``), now out of date here
            final.unlink()
        shutil.rmtree(final, ignore_errors=True)
        if resumable and stamp.is_file() and stamp.read_text() == print_:
            logger.info("stage %s: resuming from its checkpoint", name)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            stamp.write_text(print_)
            logger.info("stage %s: running", name)
        start = time.perf_counter()
        info = build(tmp) or {}
        stamp.unlink()
        os.replace(tmp, final)
        self.stages[name] = {"fingerprint": print_, "seconds": round(time.perf_counter() - start, 3), "info": info}
        self._save()
        metrics.set_gauge("mining_stage_seconds", self.stages[name]["seconds"], {"stage": name})
        logger.info("stage %s: done in %.1f s", name, self.stages[name]["seconds"])
        return info

    def timings(self) -> dict[str, float]:
        return {name: entry["seconds"] for name, entry in self.stages.items()}


def reuse_stages(source: str | Path, dest: str | Path, stages: Iterable[str]) -> None:
    """Start the output directory ``dest`` from the finished ``stages`` of the run in
    ``source`` (linked, not copied): a run in ``dest`` with the same settings skips them and
    runs the rest, e.g. the selection under other rules without judging again."""
    source, dest = Path(source).resolve(), Path(dest)
    finished = Manifest(source).stages
    missing = [name for name in stages if name not in finished]
    if missing:
        raise ValueError(f"{source} has no finished stage {missing}; it has {sorted(finished)}")
    reused = Manifest(dest)
    for name in stages:
        link = reused.stage_dir(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        target = source / "stages" / name
        if link.is_symlink() and link.resolve() == target.resolve():
            pass  # reused before by a run that then stopped
        elif link.is_symlink() or link.exists():
            raise FileExistsError(f"{link} exists: reuse stages into a new output directory")
        else:
            link.symlink_to(target, target_is_directory=True)
        reused.stages[name] = finished[name]
    reused._save()
