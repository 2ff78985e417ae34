"""`make replicate`: a small-scale UniME-V2 replication on packaged data, through our own jobs.

Round 0: E0 (the embedder trained from scratch with in-batch InfoNCE, playing VLM2Vec) and
J (the reranker trained from scratch on labelled pairs whose negatives E0 retrieved,
playing the MLLM judge), with J's quality on held-out pairs. Round 1: mining with E0 and J,
then, from E0 with the same steps and batch, each arm of configs/replicate.yaml for every
seed, a reranker trained from J on the mined records, and MMEB-protocol evaluation of all
of them on an MMEB-mini built from held-out data. Writes benchmarks/results/replication.json
and replication.png.

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
from unime_ray.replication.config import ReplicateConfig

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


def train(kind: str, out: Path, model: Path | str, mined: Path, overrides: list[str]) -> None:
    from unime_ray.training.job import run_training_job

    if kind == "embedder":
        from unime_ray.training.config import TrainEmbedderConfig as config_class
        from unime_ray.training.embedder_loop import train_embedder_loop as loop
    else:
        from unime_ray.training.config import TrainRerankerConfig as config_class
        from unime_ray.training.reranker_loop import train_reranker_loop as loop
    run_training_job(config_class, loop, ["--config", str(REPO / f"configs/train_{kind}.yaml"), "--output-dir",
                                          str(out), f"model={model}", f"data.mined={mined / 'mined.parquet'}",
                                          f"run_name={out.name}", *overrides])


def evaluate(out: Path, tasks: Path, model: Path | str, label: str, overrides: list[str],
             reranker: Path | None = None) -> None:
    from unime_ray.eval.config import EvalConfig
    from unime_ray.eval.evaluate import run_evaluation

    run_evaluation(load_config(EvalConfig, REPO / "configs/evaluate.yaml", [
        f"output_dir={out}", f"tasks.path={tasks}", f"embed.model={model}", f"label={label}",
        *([f"rerank.model={reranker}"] if reranker else []), *overrides]))


def judge_quality(mined: Path, labels: Path, beta: float) -> dict:
    """In a Ray task: the scores are read there, only the numbers come back."""
    import ray

    from unime_ray.replication.judge_quality import judge_quality_of_run

    return ray.get(ray.remote(judge_quality_of_run).options(num_cpus=0.5).remote(
        str(mined / "stages/judge/scores"), str(labels), beta))


def records_profile(mined: Path, train, labels: Path) -> dict:
    """In a Ray task, as ``judge_quality``: what an arm with the training config ``train`` trains on."""
    import ray

    from unime_ray.replication.judge_quality import records_profile_of_run

    return ray.get(ray.remote(records_profile_of_run).options(num_cpus=0.5).remote(
        str(mined / "mined.parquet"), train.num_negatives, train.temperature, str(labels)))


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
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    import ray

    from unime_ray.data.labelled_corpus import LABELS_FILE, build_labelled_corpus
    from unime_ray.eval.build_mini import build_mini
    from unime_ray.mining.config import MineConfig
    from unime_ray.replication.tables import arm_summary, delta_table, markdown_table
    from unime_ray.training.config import TrainEmbedderConfig
    from unime_ray.training.merge import MergeConfig, merge_models

    cfg = parse_job_args(ReplicateConfig, argv, __doc__.splitlines()[0])
    out = Path(cfg.output_dir).resolve()
    embedder, reranker = Path(cfg.embedder).resolve(), Path(cfg.reranker).resolve()
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

    # Round 0: E0 from scratch on the labelled pairs (negatives unused: in-batch InfoNCE) ...
    mined0, e0 = out / "round0/records", out / "round0/E0"
    steps.run("round 0: labelled records", mined0 / "summary.json",
              lambda: mine(mined0, train_corpus, embedder, cfg.mine, labels=train_corpus / LABELS_FILE))
    steps.run("round 0: train E0 (in-batch InfoNCE)", e0 / "train_summary.json",
              lambda: train("embedder", e0, embedder, mined0, cfg.round0_embedder))
    # ... then J on pairs E0 retrieves, their negatives known from the labels.
    pairs0, judge = out / "round0/judge_pairs", out / "round0/J"
    steps.run("round 0: E0 retrieves J's pairs", pairs0 / "summary.json",
              lambda: mine(pairs0, train_corpus, e0 / "model", cfg.mine, labels=train_corpus / LABELS_FILE))
    steps.run("round 0: train J (pairwise + listwise)", judge / "train_summary.json",
              lambda: train("reranker", judge, reranker, pairs0, cfg.round0_reranker))
    heldout = out / "round0/J_heldout"
    steps.run("round 0: J judges held-out pairs", heldout / "summary.json",
              lambda: mine(heldout, heldout_corpus, e0 / "model", cfg.mine, judge=judge / "model"))

    # Round 1: mine with E0 and J; every arm from E0, same steps and batch.
    mined1 = out / "round1/mined"
    steps.run("round 1: mine with E0 and J", mined1 / "summary.json",
              lambda: mine(mined1, train_corpus, e0 / "model", cfg.mine, judge=judge / "model"))
    runs = {(arm.name, seed): out / f"round1/{arm.name}/seed{seed}" for arm in cfg.arms for seed in cfg.seeds}
    records = {arm.name: mined1 if arm.records == "mined" else pairs0 for arm in cfg.arms}
    for arm in cfg.arms:
        if arm.select:  # round 1's judged pairs (its stages reused), selected under the arm's rule
            records[arm.name] = out / f"round1/{arm.name}/mined"
            steps.run(f"round 1: re-select for {arm.name}", records[arm.name] / "summary.json",
                      lambda arm=arm: mine(records[arm.name], train_corpus, e0 / "model",
                                           [*cfg.mine, *arm.select, f"reuse_from={mined1}"], judge=judge / "model"))
        for seed in cfg.seeds:
            run = runs[arm.name, seed]
            if arm.merge is None:
                steps.run(f"round 1: {arm.name}, seed {seed}", run / "train_summary.json",
                          lambda run=run, arm=arm, seed=seed: train(
                              "embedder", run, e0 / "model", records[arm.name],
                              [*cfg.arm_common, *arm.overrides, f"seed={seed}"]))
                continue
            for group, names in arm.merge.groups.items():  # one embedder per group, then merged
                steps.run(f"round 1: {arm.name}/{group}, seed {seed}", run / group / "train_summary.json",
                          lambda run=run, arm=arm, seed=seed, group=group, names=names: train(
                              "embedder", run / group, e0 / "model", records[arm.name],
                              [*cfg.arm_common, *arm.overrides, f"seed={seed}", f"data.datasets=[{', '.join(names)}]"]))
            steps.run(f"round 1: {arm.name} merged, seed {seed}", run / "model" / "merge.json",
                      lambda run=run, arm=arm: merge_models(MergeConfig(
                          output_dir=str(run / "model"), base=str(e0 / "model"), method=arm.merge.method,
                          models=[str(run / group / "model") for group in arm.merge.groups],
                          weights=arm.merge.weights)))
    reranker1 = out / "round1/reranker"
    steps.run("round 1: train the reranker from J", reranker1 / "train_summary.json",
              lambda: train("reranker", reranker1, judge / "model", mined1, cfg.round1_reranker))

    evals = out / "eval"
    steps.run("evaluate the random initialisation", evals / "init/results.json",
              lambda: evaluate(evals / "init", tasks, embedder, "init", cfg.evaluate))
    steps.run("evaluate E0", evals / "E0/results.json",
              lambda: evaluate(evals / "E0", tasks, e0 / "model", "E0", cfg.evaluate))
    for (name, seed), run in runs.items():
        result_dir = evals / f"{name}/seed{seed}"
        steps.run(f"evaluate {name}, seed {seed}", result_dir / "results.json",
                  lambda run=run, result_dir=result_dir, name=name, seed=seed: evaluate(
                      result_dir, tasks, run / "model", f"{name}-seed{seed}", cfg.evaluate,
                      reranker1 / "model" if name == cfg.rerank_arm else None))

    load = lambda path: json.loads(path.read_text())  # noqa: E731
    arms = {name: arm_summary([load(evals / f"{name}/results.json")]) for name in ("init", "E0")}
    seeds_of = lambda arm: arm_summary([load(evals / f"{arm.name}/seed{s}/results.json") for s in cfg.seeds])  # noqa: E731
    arms.update({arm.label: seeds_of(arm) for arm in cfg.arms if arm.table == "paper"})
    reranked = next(arm.label for arm in cfg.arms if arm.name == cfg.rerank_arm)
    arms[f"{reranked} + reranker"] = arm_summary(
        [load(evals / f"{cfg.rerank_arm}/seed{s}/results.json")["reranked"] for s in cfg.seeds])
    baseline = next(arm for arm in cfg.arms if arm.name == cfg.neighbours_baseline)
    neighbours = {baseline.label: arms[baseline.label],
                  **{arm.label: seeds_of(arm) for arm in cfg.arms if arm.table == "neighbours"}}
    beta = load_config(MineConfig, REPO / "configs/mine.yaml", cfg.mine).select.beta
    arm_training = load_config(TrainEmbedderConfig, REPO / "configs/train_embedder.yaml", cfg.arm_common)
    reselected = {arm.name: records[arm.name] for arm in cfg.arms if arm.select}
    summaries = {"round0_labels": load(pairs0 / "summary.json"), "round1": load(mined1 / "summary.json"),
                 **{f"round1_{name}": load(path / "summary.json") for name, path in reselected.items()}}
    result = {
        "config": cfg.model_dump(mode="json"),
        "judge_quality_heldout": judge_quality(heldout, heldout_corpus / LABELS_FILE, beta),
        "mining": {name: {k: summary[k] for k in (
            "queries_in", "targets_in", "pairs_judged", "records", "false_negatives_dropped", "negatives_kept",
            "fallbacks_used")} for name, summary in summaries.items()},
        "judge_quality_round1": judge_quality(mined1, train_corpus / LABELS_FILE, beta),
        "training_records": {
            name: records_profile(path, arm_training, train_corpus / LABELS_FILE) for name, path in (
                ("round1_mined", mined1), ("labels_judged", pairs0), *reselected.items())},
        "losses": {"E0": loss_curve(e0), "J": loss_curve(judge), "round1_reranker": loss_curve(reranker1),
                   **{f"{name}/seed{seed}": loss_curve(run) for (name, seed), run in runs.items()
                      if (run / "metrics.jsonl").exists()},
                   **{f"{arm.name}/seed{seed}/{group}": loss_curve(runs[arm.name, seed] / group)
                      for arm in cfg.arms if arm.merge for seed in cfg.seeds for group in arm.merge.groups}},
        "arms": arms,
        "neighbours": neighbours,
        "tables": {"meta_tasks": markdown_table(arms, "meta_tasks"), "tasks": markdown_table(arms, "tasks"),
                   "neighbours": delta_table(neighbours, baseline.label)},
        "step_seconds": steps.seconds,
        "minutes": round(sum(steps.seconds.values()) / 60, 1),
    }
    chart(arms, REPO / cfg.chart)
    write_result(result, str(REPO / cfg.results))
    ray.shutdown()
    return result


if __name__ == "__main__":  # vLLM's engine spawns processes: keep the guard
    main()
