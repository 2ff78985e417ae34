"""Evaluation results as a Markdown table and a PNG chart, one column per run.

A run's ``results.json`` gives one column, or two when it was reranked (the embedder
alone, then with the reranker), so both numbers stand side by side. Comparing runs
(base vs trained, embedder vs reranked) is the same table with more columns:

    python -m unime_ray.eval.report OUT/a/results.json OUT/b/results.json --output-dir OUT/compare
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from unime_ray.eval.metrics import META_TASKS

logger = logging.getLogger(__name__)

Column = tuple[str, dict]  # (label, {"tasks": ..., "meta_tasks": ..., "overall": ...})


def columns(results: dict) -> list[Column]:
    found = [(results["label"], results)]
    if results.get("reranked"):
        found.append((f"{results['label']} + reranker", results["reranked"]))
    return found


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(cols: list[Column], metric: str = "precision_at_1") -> str:
    """Tasks grouped by meta-task, then the meta-task means and the overall mean (in %)."""
    names = list(dict.fromkeys(name for _, run in cols for name in run["tasks"]))
    meta_of = {name: run["tasks"][name]["meta_task"] for _, run in cols for name in run["tasks"]}
    lines = [f"| task | meta-task | n | {' | '.join(label for label, _ in cols)} |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for meta in META_TASKS:
        for name in (n for n in names if meta_of[n] == meta):
            n = next(run["tasks"][name]["n"] for _, run in cols if name in run["tasks"])
            values = [_percent(run["tasks"].get(name, {}).get(metric)) for _, run in cols]
            lines.append(f"| {name} | {meta} | {n} | {' | '.join(values)} |")
    for meta in META_TASKS:
        if any(meta in run["meta_tasks"] for _, run in cols):
            values = [_percent(run["meta_tasks"].get(meta)) for _, run in cols]
            lines.append(f"| **{meta}** | | | {' | '.join(values)} |")
    lines.append(f"| **overall** | | | {' | '.join(_percent(run['overall']) for _, run in cols)} |")
    return "\n".join(lines) + "\n"


def chart(cols: list[Column], path: str | Path, metric: str = "precision_at_1") -> Path:
    """Horizontal grouped bars: one group per task (and overall), one bar per column."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for _, run in cols for name in run["tasks"])) + ["overall"]
    height = 0.8 / len(cols)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) * max(1, len(cols) / 2) + 1.2))
    for i, (label, run) in enumerate(cols):
        values = [100 * ((run["overall"] if name == "overall" else run["tasks"].get(name, {}).get(metric)) or 0.0)
                  for name in names]
        axes.barh([y + i * height for y in range(len(names))], values, height=height, label=label)
    axes.set_yticks([y + height * (len(cols) - 1) / 2 for y in range(len(names))], names)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel(f"{metric.replace('_', ' ')} (%)")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def write_report(cols: list[Column], out_dir: str | Path, stem: str) -> dict[str, str]:
    """``stem``.md and ``stem``.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown(cols))
    return {"markdown": str(out / f"{stem}.md"), "chart": str(chart(cols, out / f"{stem}.png"))}


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description="Put evaluation results side by side")
    parser.add_argument("results", nargs="+", help="results.json files of evaluation runs")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--labels", nargs="*", help="one label per file (default: each run's own)")
    args = parser.parse_args(argv)
    runs = [json.loads(Path(path).read_text()) for path in args.results]
    if args.labels:
        if len(args.labels) != len(runs):
            raise SystemExit(f"{len(args.labels)} labels for {len(runs)} results files")
        for run, label in zip(runs, args.labels):
            run["label"] = label
    cols = [column for run in runs for column in columns(run)]
    written = write_report(cols, args.output_dir, "comparison")
    print(Path(written["markdown"]).read_text())
    return written


if __name__ == "__main__":
    main()
