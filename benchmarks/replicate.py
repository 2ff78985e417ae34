"""`make replicate`: a small-scale UniME-V2 replication on packaged data, through our own jobs.

The paper's protocol at small scale. Two tiny Qwen2-VL models are pretrained generatively
from random weights on instruction turns of the training splits: a base (every embedder
starts from it) and a larger judge. E0, InfoNCE from the base, only retrieves (it plays
VLM2Vec). The judge, used zero-shot with METHOD's prompt, scores E0's global top 50 of
every training query; its quality is measured on a held-out labelled corpus. Every arm of
configs/replicate.yaml trains from the base with the same steps, batch and learning rate,
for every seed: the paper's arms, (c) under label judges of known quality (the
judge-quality curve) and (c)'s variants. A reranker is trained from the judge on the mined
records and reranks arms' top candidates listwise and pointwise. Everything is evaluated on
an MMEB-mini built from held-out data, with paired bootstrap intervals. Writes
benchmarks/results/replication.json, replication.png and judge_quality_curve.png.

    python benchmarks/replicate.py --config configs/replicate.yaml [overrides]

One line per step on the terminal; each step's output goes to OUT/logs/<step>.log. Steps
whose output exists are skipped, so a rerun continues where a stopped one was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from reporting import REPO, write_result

from unime_ray.config import load_config, parse_job_args
from unime_ray.replication.config import ReplicateConfig, check_plan

logger = logging.getLogger("benchmarks.replicate")


class Steps:
    """Runs each step once (skipped when its ``done`` file exists). While a step runs, the
    process's stdout and stderr (file descriptors: Ray's and vLLM's native logs too) go to
    its log file; the terminal gets one line per step."""

    def __init__(self, out: Path):
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings = out / "step_seconds.json"  # kept across reruns, so the total counts every step once
        self.seconds: dict[str, float] = json.loads(self.timings.read_text()) if self.timings.exists() else {}
        self.count = 0
        self.terminal = os.fdopen(os.dup(1), "w", buffering=1)

    @contextlib.contextmanager
    def _output_to(self, log: Path):
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(log, "ab") as stream:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])

    def run(self, name: str, done: Path, work: Callable[[], object]) -> None:
        self.count += 1
        self.terminal.write(f"[{self.count:2d}] {name:44s} ")
        self.terminal.flush()
        if done.exists():
            self.terminal.write("done before\n")
            return
        began = time.perf_counter()
        log = self.logs / f"{self.count:02d}-{name.replace(' ', '_').replace('/', '-')}.log"
        try:
            with self._output_to(log):
                work()
        except BaseException:
            self.terminal.write(f"FAILED; see {log}\n")
            raise
        self.seconds[name] = round(time.perf_counter() - began, 1)
        self.timings.write_text(json.dumps(self.seconds, indent=1))
        self.terminal.write(f"done in {self.seconds[name]:.0f} s\n")


def mine(out: Path, corpus: Path, embedder: Path | str, overrides: list[str], judge: Path | str | None = None,
         labels: Path | None = None) -> None:
    from unime_ray.mining.config import MineConfig
    from unime_ray.mining.pipeline import run_mining

    who = [f"judge.labels={labels}"] if labels else [f"judge.model={judge}"]
    run_mining(load_config(MineConfig, REPO / "configs/mine.yaml", [
        f"output_dir={out}", "corpus.source=parquet", f"corpus.path={corpus}", f"corpus.image_root={corpus}",
        f"embed.model={embedder}", "write_unime_json=false", *who, *overrides]))


TRAINERS = {  # job -> (config class, worker loop), imported when a step runs
    "embedder": ("TrainEmbedderConfig", "unime_ray.training.embedder_loop:train_embedder_loop"),
    "reranker": ("TrainRerankerConfig", "unime_ray.training.reranker_loop:train_reranker_loop"),
    "pretrain": ("PretrainConfig", "unime_ray.training.pretrain_loop:pretrain_loop"),
}


def train(kind: str, out: Path, model: Path | str, data: Path, overrides: list[str]) -> None:
    """A training job on ``data`` (a mining run's directory, or a Parquet table)."""
    import importlib

    from unime_ray.training import config as configs
    from unime_ray.training.job import run_training_job

    class_name, loop = TRAINERS[kind]
    module, function = loop.split(":")
    records = data / "mined.parquet" if data.is_dir() else data
    yaml = REPO / f"configs/{'pretrain' if kind == 'pretrain' else f'train_{kind}'}.yaml"
    run_training_job(getattr(configs, class_name), getattr(importlib.import_module(module), function),
                     ["--config", str(yaml), "--output-dir", str(out), f"model={model}", f"data.mined={records}",
                      f"run_name={out.name}", *overrides])


def evaluate(out: Path, tasks: Path, model: Path | str, label: str, overrides: list[str],
             reranker: Path | None = None) -> None:
    from unime_ray.eval.config import EvalConfig
    from unime_ray.eval.evaluate import run_evaluation

    run_evaluation(load_config(EvalConfig, REPO / "configs/evaluate.yaml", [
        f"output_dir={out}", f"tasks.path={tasks}", f"embed.model={model}", f"label={label}",
        *([f"rerank.model={reranker}"] if reranker else []), *overrides]))


def in_worker(function, *args):
    """``function(*args)`` in a Ray task: per-pair and per-query tables are read there, only
    the numbers come back to the driver."""
    import ray

    return ray.get(ray.remote(function).options(num_cpus=0.5).remote(*args))


def loss_curve(train_dir: Path) -> dict:
    """First and last logged loss, and the mean of the last 10 steps."""
    steps = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps]
    return {"steps": len(losses), "first": losses[0], "last": losses[-1],
            "last_10_mean": sum(losses[-10:]) / len(losses[-10:])}


def chart(arms: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*next(iter(arms.values()))["meta_tasks"], "overall"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(arms)
    for i, (name, summary) in enumerate(arms.items()):
        cells = [summary["overall"] if g == "overall" else summary["meta_tasks"][g] for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], [c["mean"] for c in cells], width,
               yerr=[c["std"] for c in cells], capsize=3, label=name)
    ax.set_xticks([x + width * (len(arms) - 1) / 2 for x in range(len(groups))], groups)
    ax.set_ylabel("Precision@1 (strict), mean ± std over seeds")
    ax.set_title("Small-scale UniME-V2 replication (MMEB-mini, held-out data)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def curve_chart(points: list[dict], path: Path) -> None:
    """(c) minus (a) with its 95% interval against the judge's held-out AUC: one line
    through the label judges (with noise, and exact), one marker per other judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind, style in (("labels", "o-"), ("graded labels", "s"), ("pretrained judge", "D")):
        group = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["auc"])
        if group:
            ax.errorbar([p["auc"] for p in group], [p["difference"] for p in group], fmt=style, capsize=4,
                        label=kind, yerr=[[p["difference"] - p["low"] for p in group],
                                          [p["high"] - p["difference"] for p in group]])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("judge's AUC on held-out labelled pairs")
    ax.set_ylabel("(c) minus (a), overall P@1 (points)")
    ax.set_title("Judge quality against the soft labels' gain (95% paired bootstrap)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    import ray

    from unime_ray.data.instructions import build_instructions
    from unime_ray.data.labelled_corpus import LABELS_FILE, build_labelled_corpus
    from unime_ray.eval.build_mini import build_mini
    from unime_ray.mining.config import MineConfig
    from unime_ray.models.tiny import build_tiny_checkpoint
    from unime_ray.replication.bootstrap import paired_difference_of_runs
    from unime_ray.replication.judge_quality import judge_quality_of_run, records_profile_of_run
    from unime_ray.replication.tables import arm_summary, markdown_table
    from unime_ray.training.config import TrainEmbedderConfig

    cfg = parse_job_args(ReplicateConfig, argv, __doc__.splitlines()[0])
    check_plan(cfg, REPO)
    out = Path(cfg.output_dir).resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    # Workers' logs stay in Ray's session files; the terminal shows one line per step.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    steps = Steps(out)
    train_corpus, heldout_corpus, tasks = out / "corpus/train", out / "corpus/heldout", out / "mmeb_mini"
    steps.run("build the training corpus", train_corpus / LABELS_FILE, lambda: build_labelled_corpus(
        train_corpus, "train", cfg.train_easyvqa_images, cfg.train_digits))
    steps.run("build the held-out judge corpus", heldout_corpus / LABELS_FILE, lambda: build_labelled_corpus(
        heldout_corpus, "test", cfg.heldout_easyvqa_images, cfg.heldout_digits))
    steps.run("build the MMEB-mini (held-out)", tasks / "tasks.json",
              lambda: build_mini(tasks, queries_per_task=cfg.eval_queries_per_task))

    # The pretrained MLLMs: instruction turns of the training splits, then next-token training.
    instructions = out / "pretrain/instructions"
    turns = instructions / "instructions.parquet"
    steps.run("build the instruction turns", turns, lambda: build_instructions(
        instructions, cfg.instructions_easyvqa_images, cfg.instructions_digits))
    pretrained = {}
    for role, spec in (("base", cfg.base), ("judge", cfg.judge)):
        initial, run = out / f"pretrain/{role}_init", out / f"pretrain/{role}"
        steps.run(f"random {role} ({spec.layers} x {spec.hidden_size})", initial / "config.json",
                  lambda initial=initial, spec=spec, role=role: build_tiny_checkpoint(
                      initial, "judge" if role == "judge" else "embedder", spec.seed, hidden_size=spec.hidden_size,
                      layers=spec.layers))
        steps.run(f"pretrain the {role}", run / "train_summary.json",
                  lambda initial=initial, run=run, spec=spec: train("pretrain", run, initial, turns, spec.overrides))
        pretrained[role] = run / "model"
    base, judge = pretrained["base"], pretrained["judge"]

    # E0, the retriever: InfoNCE from the base on the labelled positives; it only retrieves.
    records0, e0 = out / "round0/records", out / "round0/E0"
    steps.run("E0: labelled records", records0 / "summary.json",
              lambda: mine(records0, train_corpus, base, cfg.mine, labels=train_corpus / LABELS_FILE))
    steps.run("E0: train (in-batch InfoNCE, from the base)", e0 / "train_summary.json",
              lambda: train("embedder", e0, base, records0, cfg.retriever))

    # Judges' quality on held-out pairs E0 retrieves: the pretrained judge, and each label judge.
    heldout = {"model": out / "heldout/model"}
    steps.run("held-out: E0 retrieves, the judge scores", heldout["model"] / "summary.json",
              lambda: mine(heldout["model"], heldout_corpus, e0 / "model", cfg.mine, judge=judge))
    label_judges = {" ".join(a.judge_overrides) or "labels": a.judge_overrides
                    for a in cfg.active_arms if a.judge == "labels"}
    for key, options in label_judges.items():
        heldout[key] = out / f"heldout/labels{len(heldout)}"
        steps.run(f"held-out: labels judge ({key})", heldout[key] / "summary.json",
                  lambda key=key, options=options: mine(
                      heldout[key], heldout_corpus, e0 / "model",
                      [*cfg.mine, *options, f"reuse_from={heldout['model']}"], labels=heldout_corpus / LABELS_FILE))

    # Round 1: E0 retrieves every training query's global top 50, the judge scores them.
    mined1 = out / "round1/mined"
    steps.run("round 1: mine with E0 and the judge", mined1 / "summary.json",
              lambda: mine(mined1, train_corpus, e0 / "model", cfg.mine, judge=judge))
    records = {}
    for arm in cfg.active_arms:
        if arm.judge == "model" and not arm.mine:
            records[arm.name] = mined1
            continue
        records[arm.name] = out / f"round1/{arm.name}/mined"
        who = {"labels": train_corpus / LABELS_FILE} if arm.judge == "labels" else {"judge": judge}
        steps.run(f"round 1: records for {arm.name}", records[arm.name] / "summary.json",
                  lambda arm=arm, who=who: mine(records[arm.name], train_corpus, e0 / "model",
                                                [*cfg.mine, *arm.mine, f"reuse_from={mined1}"], **who))

    runs = {(arm.name, seed): out / f"round1/{arm.name}/seed{seed}" for arm in cfg.active_arms for seed in cfg.seeds}
    for arm in cfg.active_arms:
        for seed in cfg.seeds:
            run = runs[arm.name, seed]
            steps.run(f"train {arm.name}, seed {seed}", run / "train_summary.json",
                      lambda run=run, arm=arm, seed=seed: train(
                          "embedder", run, base, records[arm.name], [*cfg.arm_common, *arm.overrides, f"seed={seed}"]))
    rerankers = {}
    for source in dict.fromkeys(run.records for run in cfg.active_reranking):
        rerankers[source] = out / ("round1/reranker" if source == "round1" else f"round1/reranker_{source}")
        steps.run(f"train the reranker from the judge on {source}'s records", rerankers[source] / "train_summary.json",
                  lambda source=source: train("reranker", rerankers[source], judge,
                                              mined1 if source == "round1" else records[source], cfg.rerank.training))

    evals = out / "eval"
    steps.run("evaluate the base", evals / "base/results.json",
              lambda: evaluate(evals / "base", tasks, base, "base", cfg.evaluate))
    steps.run("evaluate E0", evals / "E0/results.json",
              lambda: evaluate(evals / "E0", tasks, e0 / "model", "E0", cfg.evaluate))
    for (name, seed), run in runs.items():
        result_dir = evals / f"{name}/seed{seed}"
        steps.run(f"evaluate {name}, seed {seed}", result_dir / "results.json",
                  lambda run=run, result_dir=result_dir, name=name, seed=seed: evaluate(
                      result_dir, tasks, run / "model", f"{name}-seed{seed}", cfg.evaluate))
    reranked = {(run.records, name, top_n, mode, seed):
                evals / f"{name}/seed{seed}/rerank_{run.records}_{mode}_top{top_n}"
                for run in cfg.active_reranking for name in run.arms for top_n in run.top_n for mode in run.modes
                for seed in cfg.seeds}
    for (source, name, top_n, mode, seed), result_dir in reranked.items():
        steps.run(f"rerank {name} top {top_n} {mode} ({source}), seed {seed}", result_dir / "results.json",
                  lambda source=source, name=name, seed=seed, result_dir=result_dir, top_n=top_n, mode=mode: evaluate(
                      result_dir, tasks, runs[name, seed] / "model", f"{name}-seed{seed}-{mode}{top_n}",
                      [*cfg.evaluate, f"rerank.mode={mode}", f"rerank.top_n={top_n}"], rerankers[source] / "model"))

    load = lambda path: json.loads(path.read_text())  # noqa: E731
    seed_dirs = lambda name: [str(evals / f"{name}/seed{s}") for s in cfg.seeds]  # noqa: E731
    label_of = {arm.name: arm.label for arm in cfg.arms}
    summaries = {"base": arm_summary([load(evals / "base/results.json")]),
                 "E0": arm_summary([load(evals / "E0/results.json")]),
                 **{arm.label: arm_summary([load(Path(d) / "results.json") for d in seed_dirs(arm.name)])
                    for arm in cfg.active_arms}}
    paper = {k: v for k, v in summaries.items() if k in ("base", "E0") or
             k in [a.label for a in cfg.active_arms if a.table == "paper"]}
    differences = {arm.label: in_worker(paired_difference_of_runs, seed_dirs(arm.name), seed_dirs(cfg.reference),
                                        "ranked", "ranked", cfg.bootstrap_resamples)
                   for arm in cfg.active_arms if arm.name != cfg.reference}
    variants = {arm.label: in_worker(paired_difference_of_runs, seed_dirs(arm.name), seed_dirs(cfg.method),
                                     "ranked", "ranked", cfg.bootstrap_resamples)
                for arm in cfg.active_arms if arm.table == "variants"}
    reranking = {}
    for source, name, top_n, mode in dict.fromkeys(key[:4] for key in reranked):
        dirs = [str(reranked[source, name, top_n, mode, s]) for s in cfg.seeds]
        results = [load(Path(d) / "results.json")["reranked"] for d in dirs]
        reranking[f"{label_of[name]} + {mode} top {top_n} (reranker trained on {source})"] = {
            "summary": arm_summary(results),
            "minus_embedder": in_worker(paired_difference_of_runs, dirs, dirs, "reranked", "ranked",
                                        cfg.bootstrap_resamples),
            "fallbacks": sum(r["fallbacks"] for r in results),
            "first_choice_positions": [sum(c) for c in zip(*(r["first_choice_positions"] for r in results))],
            "gold_positions": [sum(c) for c in zip(*(r["gold_positions"] for r in results))]}
    beta = load_config(MineConfig, REPO / "configs/mine.yaml", cfg.mine).select.beta
    quality = {key: in_worker(judge_quality_of_run, str(path / "stages/judge/scores"),
                              str(heldout_corpus / LABELS_FILE), beta) for key, path in heldout.items()}
    curve = []
    for arm in cfg.active_arms:
        if arm.table in ("judge_curve",) or arm.name == cfg.method or (arm.judge == "labels" and not arm.mine):
            key = "model" if arm.judge == "model" else (" ".join(arm.judge_overrides) or "labels")
            kind = ("pretrained judge" if arm.judge == "model" else
                    "graded labels" if any("label_grading" in o for o in arm.judge_overrides) else "labels")
            curve.append({"judge": arm.label, "kind": kind, "auc": quality[key]["auc"], **differences[arm.label]})
    arm_training = load_config(TrainEmbedderConfig, REPO / "configs/train_embedder.yaml", cfg.arm_common)
    result = {
        "config": cfg.model_dump(mode="json"),
        "protocol": {"base": str(base), "judge": str(judge), "retriever": "E0: InfoNCE from the base",
                     "arms_start_from": "the base", "judge_use": "zero-shot, METHOD's prompt, P(Yes)"},
        "judge_quality_heldout": quality,
        "judge_quality_round1": in_worker(judge_quality_of_run, str(mined1 / "stages/judge/scores"),
                                          str(train_corpus / LABELS_FILE), beta),
        "mining": {name: {k: load(path / "summary.json")[k] for k in (
            "queries_in", "targets_in", "pairs_judged", "records", "false_negatives_dropped", "negatives_kept",
            "fallbacks_used")} for name, path in {"round1": mined1, **records}.items()},
        "training_records": {name: in_worker(records_profile_of_run, str(path / "mined.parquet"),
                                             arm_training.num_negatives, arm_training.temperature,
                                             str(train_corpus / LABELS_FILE)) for name, path in records.items()},
        "losses": {"pretrain_base": loss_curve(out / "pretrain/base"), "pretrain_judge": loss_curve(out / "pretrain/judge"),
                   "E0": loss_curve(e0), **{f"reranker/{k}": loss_curve(v) for k, v in rerankers.items()},
                   **{f"{name}/seed{seed}": loss_curve(run) for (name, seed), run in runs.items()}},
        "arms": summaries,
        "differences_from_reference": differences,
        "variants_against_method": variants,
        "judge_quality_curve": curve,
        "reranking": reranking,
        "tables": {"meta_tasks": markdown_table(paper, "meta_tasks"), "tasks": markdown_table(paper, "tasks")},
        "step_seconds": steps.seconds,
        "minutes": round(sum(steps.seconds.values()) / 60, 1),
    }
    chart(paper, REPO / cfg.chart)
    if "judge_curve" in cfg.parts:
        curve_chart(curve, REPO / cfg.curve_chart)
    write_result(result, str(REPO / cfg.results))
    ray.shutdown()
    return result


if __name__ == "__main__":  # vLLM's engine spawns processes: keep the guard
    main()
