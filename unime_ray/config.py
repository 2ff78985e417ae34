"""Typed job configs: YAML in, dotted command-line overrides on top.

Every job has one pydantic model (``extra="forbid"``, so a misspelt key is an error
naming it). ``parse_job_args`` gives each job the same command line::

    python jobs/mine.py --config configs/mine.yaml --output-dir OUT judge.backend=transformers
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {override!r} is not of the form key.path=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw) if raw.strip() else None


def load_config(model: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``model`` from a YAML file (optional) and dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    return model.model_validate(data)


def parse_job_args(model: type[T], argv: Sequence[str] | None = None, description: str = "",
                   shortcuts: dict[str, str] | None = None) -> T:
    """The shared command line of our jobs: ``--config``, ``--output-dir``, overrides.

    ``shortcuts`` adds flags that stand for one override each, e.g.
    ``{"--model": "embed.model"}``; they apply after the positional overrides.
    """
    flags = {"--output-dir": "output_dir", **(shortcuts or {})}
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with the job's config")
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key, help=f"shorthand for the override {key}=...")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. retrieval.top_k=20")
    args = vars(parser.parse_args(argv))
    overrides = list(args["overrides"])
    overrides += [f"{key}={args[key]}" for key in flags.values() if args[key] is not None]
    return load_config(model, args["config"], overrides)


def dump_config(config: BaseModel) -> str:
    """The config as YAML, for manifests and logs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
