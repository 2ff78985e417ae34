"""Seeds' evaluation results -> mean and standard deviation per task, meta-task and overall."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> dict:
    """In points (x100); the sample standard deviation, 0 for a single seed."""
    points = [100 * v for v in values]
    return {"mean": statistics.fmean(points), "std": statistics.stdev(points) if len(points) > 1 else 0.0,
            "seeds": points}


def arm_summary(results: list[dict]) -> dict:
    """``results``: one evaluation's ``results.json`` (or its ``reranked`` part) per seed.
    Precision@1 under our strict tie rule, and the overall under MMEB's argmax rule."""
    tasks = sorted(results[0]["tasks"])
    if any(sorted(r["tasks"]) != tasks for r in results):
        raise ValueError("the seeds were evaluated on different tasks")
    return {
        "tasks": {name: mean_std([r["tasks"][name]["precision_at_1"] for r in results]) for name in tasks},
        "meta_tasks": {meta: mean_std([r["meta_tasks"][meta] for r in results]) for meta in results[0]["meta_tasks"]},
        "overall": mean_std([r["overall"] for r in results]),
        "overall_mmeb": mean_std([r["mmeb"]["overall"] for r in results]),
        "tied_at_top": sum(t["tied_at_top"] for r in results for t in r["tasks"].values()),
    }


def markdown_table(arms: dict[str, dict], rows: str) -> str:
    """One row per task (``rows="tasks"``) or meta-task, a column per arm: "mean ± std"."""
    names = list(arms)
    keys = list(next(iter(arms.values()))[rows])
    lines = [f"| {rows.replace('_', '-')} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in [*keys, "overall"]:
        cells = [arms[n]["overall"] if key == "overall" else arms[n][rows][key] for n in names]
        label = f"**{key}**" if key == "overall" else key
        lines.append(f"| {label} | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def delta_table(arms: dict[str, dict], baseline: str) -> str:
    """One row per arm: each meta-task's and the overall "mean ± std", and the difference
    of its mean from ``baseline``'s (the first row)."""
    keys = [*arms[baseline]["meta_tasks"], "overall"]
    cell = lambda summary, key: summary["overall"] if key == "overall" else summary["meta_tasks"][key]  # noqa: E731
    lines = ["| arm | " + " | ".join(keys) + " | overall, difference |", "|---" * (len(keys) + 2) + "|"]
    for name, summary in arms.items():
        cells = [f"{cell(summary, k)['mean']:.1f} ± {cell(summary, k)['std']:.1f}" for k in keys]
        delta = summary["overall"]["mean"] - arms[baseline]["overall"]["mean"]
        lines.append(f"| {name} | " + " | ".join(cells) + (" | (reference) |" if name == baseline else f" | {delta:+.1f} |"))
    return "\n".join(lines)
