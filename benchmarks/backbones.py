"""The paper's other backbones through every job: for each family (Qwen2.5-VL and
LLaVA-OneVision by default; Qwen2-VL is the demo's), tiny random-weight checkpoints of
that family mine a small easy-VQA corpus (embedder on transformers, judge on vLLM), train
an embedder and a reranker with LoRA on the language model, evaluate on an MMEB-mini with
the trained reranker on vLLM, then serve: an index built with the trained embedder behind
Ray Serve, one search with reranking over HTTP. Writes benchmarks/results/backbones.json.

    python benchmarks/backbones.py [--families qwen2_5_vl,llava_onevision] [--out-dir out/backbones]

What it shows is that each architecture runs through the same code and configs, not
quality: the weights are random. One line per step; each step's output goes to
OUT/logs/<step>.log, and finished steps are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from replicate import Steps, evaluate, train
from reporting import REPO, write_result

from unime_ray.config import load_config

CORPUS_IMAGES = 12  # easy-VQA images: 36 queries
TRAIN = ["optim.max_steps=6", "optim.warmup_steps=1", "per_worker_batch_size=4", "checkpoint.every_steps=6",
         "scaling.num_workers=1"]


def mine(out: Path, embedder: Path, judge: Path) -> None:
    from unime_ray.mining.config import MineConfig
    from unime_ray.mining.pipeline import run_mining

    run_mining(load_config(MineConfig, REPO / "configs/mine.yaml", [
        f"output_dir={out}", f"corpus.num_images={CORPUS_IMAGES}", f"embed.model={embedder}",
        f"judge.model={judge}", "retrieval.top_k=12", "select.k=8", "select.step=2", "write_unime_json=false"]))


def serve_search(out: Path, embedder: Path, reranker: Path) -> dict:
    """Index the corpus' targets with ``embedder``, deploy the app, search once with reranking."""
    import requests
    from ray import serve

    from unime_ray.serving.app import build_app
    from unime_ray.serving.config import BuildIndexConfig
    from unime_ray.serving.index import build_index_dir

    index = out / "index"
    build_index_dir(BuildIndexConfig.model_validate({
        "output_dir": str(index), "embed": {"model": str(embedder)}, "corpus": {"num_images": CORPUS_IMAGES}}))
    port = 8019
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({"embedder": {"model": str(embedder)}, "index": {"path": str(index)},
                     "reranker": {"model": str(reranker), "backend": "vllm", "top_n": 3},
                     "auth": {"required": False, "api_key_env": "UNIME_BACKBONES_NO_KEY"}})
    serve.run(app, name="retrieval", route_prefix="/")
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/v1/search", timeout=300,
                               json={"text": "a red circle", "top_k": 5, "rerank": True})
        answer.raise_for_status()
        body = answer.json()
    finally:
        serve.shutdown()
    (out / "search.json").write_text(json.dumps(body, indent=1))
    return body


def main(argv=None) -> dict:
    import ray

    from unime_ray.eval.build_mini import build_mini
    from unime_ray.models.tiny import build_tiny_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="qwen2_5_vl,llava_onevision")
    parser.add_argument("--out-dir", default=str(REPO / "out/backbones"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/backbones.json"))
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    steps = Steps(out)
    tasks = out / "mmeb_mini"
    steps.run("build the MMEB-mini", tasks / "tasks.json", lambda: build_mini(tasks, queries_per_task=10))
    results = {}
    for family in args.families.split(","):
        root = out / family
        models = {role: root / "checkpoints" / role for role in ("embedder", "judge", "reranker")}
        for role, path in models.items():
            steps.run(f"{family}: tiny {role}", path / "config.json",
                      lambda role=role, path=path: build_tiny_checkpoint(path, role, family=family))
        steps.run(f"{family}: mine", root / "mine/summary.json",
                  lambda: mine(root / "mine", models["embedder"], models["judge"]))
        for kind in ("embedder", "reranker"):
            steps.run(f"{family}: train the {kind} (LoRA)", root / kind / "train_summary.json",
                      lambda kind=kind: train(kind, root / kind, models[kind], root / "mine", TRAIN))
        steps.run(f"{family}: evaluate with the reranker", root / "eval/results.json",
                  lambda: evaluate(root / "eval", tasks, root / "embedder/model", family, [],
                                   reranker=root / "reranker/model"))
        steps.run(f"{family}: serve, search with reranking", root / "search.json",
                  lambda: serve_search(root, root / "embedder/model", root / "reranker/model"))
        load = lambda path: json.loads(path.read_text())  # noqa: E731
        mined, evaluation = load(root / "mine/summary.json"), load(root / "eval/results.json")
        search = load(root / "search.json")
        results[family] = {
            "mining": {k: mined[k] for k in ("queries_in", "targets_in", "pairs_judged", "records", "rows_rejected")},
            "train_loss": {kind: load(root / kind / "train_summary.json")["metrics"].get("loss")
                           for kind in ("embedder", "reranker")},
            "formats": {kind: load(root / kind / "model/unime_format.json") for kind in ("embedder", "reranker")},
            "evaluation": {"overall": evaluation["overall"], "reranked_overall": evaluation["reranked"]["overall"]},
            "search": {"hits": len(search["hits"]), "reranked": search["reranked"], "fallback": search["fallback"]},
        }
    ray.shutdown()
    return write_result({"families": results, "step_seconds": steps.seconds}, args.out)


if __name__ == "__main__":
    sys.exit(main() and 0)
