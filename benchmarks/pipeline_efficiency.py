"""Pipeline efficiency: the judge and embed stages inside the mining job against their raw
engines on the same inputs.

    python benchmarks/pipeline_efficiency.py [--num-images 60] [--top-k 30]

1. The mining job (configs/mine.yaml, the demo's settings) runs on a local Ray cluster
   over an easy-VQA corpus; its manifest gives each stage's seconds.
2. The start-up an actor pays before its first batch (scheduling, a worker process,
   imports, model or engine load) is measured with a probe actor on the same cluster and
   subtracted from the stage's seconds ("engine start excluded").
3. The raw engines run in this process on exactly the stage's inputs: ``VLLMJudge`` on
   every pair, prepared beforehand (prompts rendered, images fitted) and submitted at
   once, so the engine alone runs at its best; ``Embedder.embed`` on every query and
   target, in batches of the stage's size. The embed stage is measured again alone
   on a larger corpus (``--embed-images``), where its fixed costs no longer dominate.

Efficiency = job rows/s / raw rows/s. Steady efficiency uses the job's rate between the
first and the last block a stage wrote instead: its start under contention (on 2 cores the
engine starts slower beside the preparation pool and Ray Data's tasks than a probe alone)
left out too. Writes benchmarks/results/pipeline_efficiency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from reporting import REPO, setup_logging, write_result

logger = logging.getLogger("benchmarks.pipeline_efficiency")

def start_up_seconds(load) -> float:
    """Seconds from asking the cluster for an actor to its engine being loaded: what the
    stage's actor pays before its first batch (scheduling, a worker process, imports, load)."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def __init__(self):
            self.engine = load()

        def ready(self) -> bool:
            return True

    started = time.perf_counter()
    probe = Probe.remote()
    ray.get(probe.ready.remote())
    seconds = time.perf_counter() - started
    ray.kill(probe)
    return seconds


def steady_rate(stage_dirs: list[Path], count) -> float | None:
    """Rows (or pairs) per second between the first and the last block each stage wrote
    (by the files' modification times), summed over ``stage_dirs``: the stage's rate once
    running, whatever its start cost under contention. ``count(file)`` gives a file's rows
    or pairs; each stage's first file is left out (it was done when the window opens)."""
    from unime_ray.dataplane.io import parquet_files

    done = seconds = 0.0
    for stage_dir in stage_dirs:
        files = sorted(parquet_files(stage_dir), key=lambda f: f.stat().st_mtime)
        if len(files) < 3:
            return None
        done += sum(count(f) for f in files[1:])
        seconds += files[-1].stat().st_mtime - files[0].stat().st_mtime
    return done / seconds


def judge_requests(stage_dir: Path, image_root: str, config) -> list:
    """Every pair of the stage, prepared for the engine (prompt rendered, images fitted)."""
    import pyarrow.parquet as pq

    from unime_ray.dataplane.io import parquet_files
    from unime_ray.dataplane.stages import ITEM_COLUMNS, row_item
    from unime_ray.mining.judge_stage import TARGET_FIELDS
    from unime_ray.models.engines.scoring import prepare_pairs
    from unime_ray.models.formats import resolve_prompt_format
    from unime_ray.models.loading import load_processor

    processor = load_processor(config.judge.model, config.judge.min_pixels, config.judge.max_pixels)
    pairs = []
    for file in parquet_files(stage_dir):
        for row in pq.read_table(file).to_pylist():
            query = row_item(row, image_root, config.corpus.max_image_pixels)
            for i in range(len(row["target_ids"])):
                fields = {c: row[TARGET_FIELDS[c]][i] for c in ITEM_COLUMNS[1:]}
                pairs.append((query, row_item(fields, image_root, config.corpus.max_image_pixels)))
    prompts = resolve_prompt_format(config.judge.model, config.judge.format)
    return prepare_pairs(processor, pairs, config.judge.max_model_len - 1, prompts)


def raw_judge(requests: list, config) -> dict:
    """The engine alone at its best: every prepared pair submitted at once, so its
    scheduler's batch is always full (what the stage's batches in flight aim at)."""
    from unime_ray.models.engines.scoring import build_judge

    judge = build_judge("vllm", **config.judge.engine_arguments())
    asyncio.run(judge.score_prepared(requests[:8]))  # warm-up (few pairs: little for the prefix cache)
    started = time.perf_counter()
    asyncio.run(judge.score_prepared(requests))
    seconds = time.perf_counter() - started
    judge.close()
    return {"pairs": len(requests), "seconds": seconds}


def raw_embed(corpus_dir: Path, image_root: str, config) -> dict:
    import pyarrow.parquet as pq

    from unime_ray.dataplane.io import parquet_files
    from unime_ray.dataplane.stages import row_item
    from unime_ray.models.embedder import Embedder
    from unime_ray.models.loading import set_torch_threads

    set_torch_threads(config.embed.torch_threads)
    e = config.embed
    embedder = Embedder.from_pretrained(e.model, e.device, e.dtype, e.min_pixels, e.max_pixels, e.format)
    items = [row_item(r, image_root, config.corpus.max_image_pixels) for name in ("queries", "targets")
             for f in parquet_files(corpus_dir / name) for r in pq.read_table(f).to_pylist()]
    embedder.embed(items[:e.batch_size])
    started = time.perf_counter()
    for start in range(0, len(items), e.batch_size):
        embedder.embed(items[start:start + e.batch_size])
    return {"rows": len(items), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--embed-images", type=int, default=1000,
                        help="a larger corpus for the embed stage alone (its fixed costs swamp the small one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/pipeline_efficiency.json"))
    args = parser.parse_args()
    setup_logging()
    import ray

    from unime_ray.config import load_config
    from unime_ray.mining.config import MineConfig
    from unime_ray.models.embedder import Embedder
    from unime_ray.models.engines.scoring import build_judge
    from unime_ray.mining.pipeline import run_mining, stage_corpus, stage_embed

    output = Path(tempfile.mkdtemp(prefix="efficiency-"))
    config = load_config(MineConfig, REPO / "configs/mine.yaml", [
        f"output_dir={output}", f"corpus.num_images={args.num_images}", f"retrieval.top_k={args.top_k}",
        "write_unime_json=false"])
    for section in (config.embed, config.judge):
        section.model = str(REPO / section.model)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    summary = run_mining(config)
    stages = json.loads((output / "manifest.json").read_text())["stages"]
    image_root = summary["image_root"] + "/corpus_images"

    large = load_config(MineConfig, REPO / "configs/mine.yaml", [f"corpus.num_images={args.embed_images}"])
    large.embed.model = config.embed.model
    large_dir = output / "embed_large"
    for name in ("corpus", "embed"):
        (large_dir / name).mkdir(parents=True)
    large_root = stage_corpus(large, large_dir / "corpus")["image_root"]
    started = time.perf_counter()
    stage_embed(large, large_dir / "corpus", large_root, large_dir / "embed")
    large_seconds = time.perf_counter() - started

    engine = config.judge.engine_arguments()
    e = config.embed
    judge_start = start_up_seconds(lambda: build_judge("vllm", **engine))
    embed_start = start_up_seconds(lambda: Embedder.from_pretrained(e.model, e.device, e.dtype, e.min_pixels,
                                                                    e.max_pixels, e.format))
    ray.shutdown()
    raw_j = raw_judge(judge_requests(output / "stages/pairs/rows", image_root, config), config)
    raw_e = raw_embed(output / "stages/corpus", image_root, config)
    raw_large = raw_embed(large_dir / "corpus", large_root, large)

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pairs_in = lambda f: pc.sum(pc.list_value_length(pq.read_table(f, columns=["target_ids"])["target_ids"])).as_py()  # noqa: E731
    rows_in = lambda f: pq.ParquetFile(f).metadata.num_rows  # noqa: E731
    steady_judge = steady_rate([output / "stages/judge/scores"], pairs_in)
    steady_embed = steady_rate([large_dir / "embed" / name for name in ("queries", "targets")], rows_in)
    pairs, rows = summary["pairs_judged"], raw_e["rows"]
    job_judge = pairs / (stages["judge"]["seconds"] - judge_start)
    job_embed = rows / (stages["embed"]["seconds"] - 2 * embed_start)  # queries and targets: two pools
    result = {
        "corpus": {"queries": summary["queries_in"], "targets": summary["targets_in"], "pairs": pairs},
        "judge": {"stage_seconds": stages["judge"]["seconds"], "engine_start_seconds": round(judge_start, 2),
                  "job_pairs_per_s": round(job_judge, 1),
                  "raw_engine_pairs_per_s": round(raw_j["pairs"] / raw_j["seconds"], 1),
                  "efficiency": round(job_judge / (raw_j["pairs"] / raw_j["seconds"]), 3),
                  "steady_pairs_per_s": steady_judge and round(steady_judge, 1),
                  "steady_efficiency": steady_judge and round(steady_judge / (raw_j["pairs"] / raw_j["seconds"]), 3),
                  "prefix_cache_hit_rate": summary["prefix_cache_hit_rate"]},
        "embed": {"stage_seconds": stages["embed"]["seconds"], "model_start_seconds": round(embed_start, 2),
                  "job_rows_per_s": round(job_embed, 1),
                  "raw_forward_rows_per_s": round(raw_e["rows"] / raw_e["seconds"], 1),
                  "efficiency": round(job_embed / (raw_e["rows"] / raw_e["seconds"]), 3)},
        "embed_large": {"rows": raw_large["rows"], "stage_seconds": round(large_seconds, 2),
                        "job_rows_per_s": round(raw_large["rows"] / (large_seconds - 2 * embed_start), 1),
                        "raw_forward_rows_per_s": round(raw_large["rows"] / raw_large["seconds"], 1),
                        "steady_rows_per_s": steady_embed and round(steady_embed, 1),
                        "steady_efficiency": steady_embed and round(steady_embed / (raw_large["rows"] / raw_large["seconds"]), 3),
                        "efficiency": round((raw_large["rows"] / (large_seconds - 2 * embed_start))
                                            / (raw_large["rows"] / raw_large["seconds"]), 3)},
        "settings": {"judge_batch_size_queries": config.judge.batch_size, "embed_batch_size": e.batch_size,
                     "top_k": args.top_k, "num_images": args.num_images, "embed_images": args.embed_images},
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
