"""What every benchmark script shares: paths, logging, the demo's records, the JSON result."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_RECORDS = REPO / "out/demo/mined.parquet"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def mined_records(path: str) -> Path:
    mined = Path(path).resolve()
    if not mined.exists():
        raise SystemExit(f"{mined} not found: run `make demo` first (it mines the demo records)")
    return mined


def write_result(result: dict, out: str) -> dict:
    """``result`` with the machine it ran on, written to ``out`` as JSON and printed."""
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}, **result}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result
