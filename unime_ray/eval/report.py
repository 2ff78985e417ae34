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

from unime_ray.eval.metrics import META_TASKS, aggregate

logger = logging.getLogger(__name__)

Column = tuple[str, dict]  # (label, {"tasks": ..., "meta_tasks": ..., "overall": ...})


def columns(results: dict) -> list[Column]:
    found = [(results["label"], results)]
    if results.get("reranked"):
        found.append((f"{results['label']} + reranker", results["reranked"]))
    return found


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(task: dict, metric: str, with_ties: bool) -> str:
    value = _percent(task.get(metric))
    return f"{value} ({task['tied_at_top']} tied)" if with_ties and task.get("tied_at_top") else value


def markdown(cols: list[Column], metric: str = "precision_at_1") -> str:
    """Tasks grouped by meta-task, then the meta-task means and the overall mean (in %). By
    MMEB's rule, a cell also says how many of the task's queries the gold won by a tie."""
    names = list(dict.fromkeys(name for _, run in cols for name in run["tasks"]))
    meta_of = {name: run["tasks"][name]["meta_task"] for _, run in cols for name in run["tasks"]}
    means = [aggregate(run["tasks"], metric) for _, run in cols]
    lines = [f"| task | meta-task | n | {' | '.join(label for label, _ in cols)} |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for meta in META_TASKS:
        for name in (n for n in names if meta_of[n] == meta):
            n = next(run["tasks"][name]["n"] for _, run in cols if name in run["tasks"])
            values = [_cell(run["tasks"].get(name, {}), metric, metric == "precision_at_1_mmeb") for _, run in cols]
            lines.append(f"| {name} | {meta} | {n} | {' | '.join(values)} |")
    for meta in META_TASKS:
        if any(meta in by_meta for by_meta, _ in means):
            lines.append(f"| **{meta}** | | | {' | '.join(_percent(by_meta.get(meta)) for by_meta, _ in means)} |")
    lines.append(f"| **overall** | | | {' | '.join(_percent(overall) for _, overall in means)} |")
    return "\n".join(lines) + "\n"


def report_markdown(cols: list[Column]) -> str:
    """Precision@1 by our strict rule, then by MMEB's (comparable with its leaderboard)."""
    return ("Precision@1 (%), a tie with the gold counts against it:\n\n" + markdown(cols)
            + "\nPrecision@1 (%) by MMEB's rule (argmax: a tie goes to the gold, listed first):\n\n"
            + markdown(cols, "precision_at_1_mmeb"))


def chart(cols: list[Column], path: str | Path, metric: str = "precision_at_1") -> Path:
    """Horizontal grouped bars: one group per task (and overall), one bar per column."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for _, run in cols for name in run["tasks"])) + ["overall"]
    overalls = [aggregate(run["tasks"], metric)[1] for _, run in cols]
    height = 0.8 / len(cols)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) * max(1, len(cols) / 2) + 1.2))
    for i, ((label, run), overall) in enumerate(zip(cols, overalls)):
        values = [100 * ((overall if name == "overall" else run["tasks"].get(name, {}).get(metric)) or 0.0)
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
    (out / f"{stem}.md").write_text(report_markdown(cols))
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
