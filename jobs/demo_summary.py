"""`make demo`'s closing summary: what was mined, how training went, the evaluation table and
the first search's hits, from the files the demo's jobs wrote under OUT.

    python jobs/demo_summary.py OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def loss_line(metrics: Path) -> str:
    """First and last step's loss of a training run's metrics.jsonl."""
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    first, last = steps[0], steps[-1]
    return f"loss {first['loss']:.3f} at step {first['step']} -> {last['loss']:.3f} at step {last['step']}"


def hits_table(answer: dict) -> str:
    """The search's hits as a small table; raises ``ValueError`` when the service refused."""
    if "hits" not in answer:
        raise ValueError(f"the search failed: {answer.get('error', answer)}")
    lines = ["| rank | id | text | cosine | embedder rank | reranker rank |", "|---:|---|---|---:|---:|---:|"]
    for hit in answer["hits"]:
        lines.append(f"| {hit['rank']} | {hit['id']} | {hit['text'] or '(image)'} | {hit['score']:.3f} | "
                     f"{hit['embedder_rank']} | {hit['reranker_rank'] or '-'} |")
    return "\n".join(lines)


def overall_line(eval_dir: Path) -> str:
    """Overall Precision@1 of the base, the trained embedder and the two with the reranker."""
    base = json.loads((eval_dir / "base" / "results.json").read_text())
    trained = json.loads((eval_dir / "trained" / "results.json").read_text())
    line = f"overall base {100 * base['overall']:.1f}, trained {100 * trained['overall']:.1f}"
    if "reranked" in trained:
        line += f", trained + reranker {100 * trained['reranked']['overall']:.1f}"
    return line


def summary(out: Path) -> str:
    mined = json.loads((out / "summary.json").read_text())
    parts = [
        f"Mined: {mined['records']} records from {mined['queries_in']} queries and {mined['targets_in']} targets; "
        f"{mined['pairs_judged']} pairs judged, {mined['false_negatives_dropped']} false negatives dropped, "
        f"{mined['rows_rejected']} rows rejected",
        f"Embedder training: {loss_line(out / 'train' / 'metrics.jsonl')}",
        f"Reranker training: {loss_line(out / 'rerank' / 'metrics.jsonl')}",
        "", "Evaluation on the MMEB-mini (Precision@1, %): " + overall_line(out / "eval"), "",
        (out / "eval" / "comparison.md").read_text().strip(),
        "", "First search after the service was ready (POST /v1/search, reranked):", "",
        hits_table(json.loads((out / "search.json").read_text())),
    ]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo's output directory")
    args = parser.parse_args(argv)
    try:
        print(summary(args.out))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
