"""Latency and throughput of the retrieval service's /v1/search, with and without rerank,
at several client concurrencies; bounded in requests and time, loopback only. Writes
JSON under benchmarks/results/.

    python benchmarks/serve_latency.py [--requests 40] [--concurrency 1 4 8] [--backend vllm]

Serves what `make demo` built: out/demo/index, the trained embedder and reranker.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from reporting import REPO, setup_logging, write_result

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
logger = logging.getLogger("benchmarks.serve_latency")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_level(url: str, requests_total: int, concurrency: int, rerank: bool, time_cap: float) -> dict:
    import requests

    session = requests.Session()

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        answer = session.post(f"{url}/v1/search", timeout=60,
                              json={"text": f"a {['red', 'blue', 'green'][i % 3]} circle", "top_k": 10,
                                    "instruction": "Find me an everyday image that matches the given caption:",
                                    "rerank": rerank})
        return time.perf_counter() - started, answer.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests_total), timeout=time_cap))
    wall = time.perf_counter() - started
    latencies = [seconds * 1000 for seconds, code in results if code == 200]
    return {"rerank": rerank, "concurrency": concurrency, "requests": requests_total,
            "failed": sum(code != 200 for _, code in results),
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "p99_ms": round(percentile(latencies, 99), 1), "mean_ms": round(statistics.fmean(latencies), 1),
            "requests_per_second": round(len(latencies) / wall, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(REPO / "out/demo/index"))
    parser.add_argument("--embedder", default=str(REPO / "out/demo/train/model"))
    parser.add_argument("--reranker", default=str(REPO / "out/demo/rerank/model"))
    parser.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--requests", type=int, default=40, help="requests per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--time-cap", type=float, default=120, help="seconds per level at most")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/serve_latency.json"))
    args = parser.parse_args(argv)
    setup_logging()
    import ray
    import requests
    from ray import serve

    from unime_ray.serving.app import build_app

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = build_app({"embedder": {"model": args.embedder}, "index": {"path": args.index},
                     "reranker": {"model": args.reranker, "backend": args.backend, "top_n": 5},
                     "auth": {"required": False, "api_key_env": "UNIME_BENCHMARK_NO_KEY"}})
    serve.run(app, name="retrieval", route_prefix="/")
    url = f"http://127.0.0.1:{args.port}"
    ready = requests.get(f"{url}/readyz", timeout=30).json()
    levels = []
    for rerank in (False, True):
        load_level(url, 4, 1, rerank, args.time_cap)  # warm-up
        for concurrency in args.concurrency:
            levels.append(load_level(url, args.requests, concurrency, rerank, args.time_cap))
            logger.info("%s", levels[-1])
    serve.shutdown()
    ray.shutdown()
    return write_result({"service": {**ready, "reranker_backend": args.backend, "top_k": 10, "rerank_top_n": 5},
                         "levels": levels}, args.out)


if __name__ == "__main__":
    main()
