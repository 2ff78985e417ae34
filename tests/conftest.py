"""Shared fixtures: tiny checkpoints are built once per session (about 7 s each)."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K, TOP_K, BETA = 6, 20, 0.01  # the end-to-end mining run's selection settings
BEFORE_JUDGE = ("corpus", "embed", "retrieve", "pairs")  # stages a run that tests judging reuses
SHARED_RECORDS = REPO.parent / "shared" / "data" / "unime_v2_example_data.json"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from unime_ray.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {role: str(build_tiny_checkpoint(root / role, role)) for role in ("embedder", "judge", "reranker")}


def lora_gradients(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def assert_same_gradients(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys() and len(expected) > 0
    for name in expected:
        # float32 sums in a different order: 1e-5 relative to the largest entry.
        scale = expected[name].abs().max().item() + 1e-12
        assert (expected[name] - actual[name]).abs().max().item() <= 1e-5 * scale + 1e-9, name


def perturb(module, seed: int, scale: float) -> None:
    """Stands for training: every trainable parameter moves by seeded noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def text_records() -> list[dict]:
    """Four mined records with text items only: four queries over six targets, which repeat
    across and within records."""
    texts = {f"t{i}": f"target number {i} is a {c} shape" for i, c in enumerate("red blue green gray teal black".split())}
    records = []
    for q, (pos, negs) in enumerate([("t0", ["t1", "t2", "t1"]), ("t1", ["t0", "t2", "t3"]),
                                      ("t2", ["t3", "t4", "t5"]), ("t3", ["t0", "t1", "t4"])]):
        records.append({"query_id": f"q{q}", "query_instruction": "Find:", "query_text": f"query {q}",
                        "query_image": "", "positive_id": pos, "pos_instruction": "", "pos_text": texts[pos],
                        "pos_image": "", "query_pos_score": 0.9, "neg_ids": negs,
                        "neg_instructions": [""] * 3, "neg_texts": [texts[n] for n in negs], "neg_images": [""] * 3,
                        "neg_scores": [0.5 - 0.1 * i for i in range(3)]})
    return records


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- A real Ray head and one mining run, shared by the end-to-end tests -------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this process for one test module (a module may define its own)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head on loopback in its own temp dir; stopped afterwards. Three logical CPUs on
    two cores: a resumed Ray Data stage runs Ray's checkpoint filter actor (1 CPU, fixed by
    Ray) beside the engine actor (1 CPU) and its read tasks."""
    temp = tempfile.mkdtemp(prefix="ur", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Token auth on, with this cluster's own token: nothing depends on ~/.ray.
    # The serving app's API key: Serve replicas read it from the environment `ray start` ran in.
    api_key = secrets.token_urlsafe(24)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "UNIME_API_KEY": api_key}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", "--num-cpus=3", f"--temp-dir={temp}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    yield {"address": f"http://127.0.0.1:{dash}", "env": env, "api_key": api_key}
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory):
    """12 easy-VQA images (36 queries) plus bad rows of every kind."""
    from unime_ray.data.corpus import Corpus
    from unime_ray.data.easyvqa import build_easyvqa_corpus

    corpus = build_easyvqa_corpus(num_images=12, seed=7)
    queries = corpus.queries.to_pylist() + [
        {"id": "bad:missing", "instruction": "Find a caption for the given image.", "image_path": "no/such.png",
         "positive_id": "ans:yes", "dataset": "planted"},
        {"id": "bad:empty", "text": "", "positive_id": "ans:yes", "dataset": "planted"},
        {"id": "bad:unknown", "text": "what?", "positive_id": "ans:nope", "dataset": "planted"},
        {"id": "bad:corrupt_pos", "text": "what?", "positive_id": "img:corrupt", "dataset": "planted"},
        # Decodes and passes validation, but Qwen2-VL's processor refuses the aspect ratio.
        {"id": "bad:thin", "image": png_bytes(size=(2, 600)), "positive_id": "ans:yes", "dataset": "planted"},
    ]
    targets = corpus.targets.to_pylist() + [
        {"id": "img:corrupt", "image": b"\x89PNG\r\n\x1a\n truncated", "dataset": "planted"},
        {"id": "img:escape", "image_path": "../../../etc/hostname", "dataset": "planted"},
        {"id": "img:thin", "image": png_bytes(size=(600, 2)), "dataset": "planted"},
    ]
    out = tmp_path_factory.mktemp("corpus")
    Corpus(pa.Table.from_pylist(queries, schema=corpus.queries.schema),
           pa.Table.from_pylist(targets, schema=corpus.targets.schema)).save(out)
    return {"path": str(out), "image_root": corpus.image_root, "good_queries": corpus.queries.num_rows}


def submit_job(head, entrypoint: list[str], *extra: str, timeout: int = 900):
    """`ray job submit --working-dir REPO [extra] -- ENTRYPOINT` against the test head."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir", str(REPO),
           *extra, "--", *entrypoint]
    return subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=timeout)


def mining_args(planted, checkpoints, output_dir, overrides=()) -> list[str]:
    """`jobs/mine.py`'s command line for the planted corpus (the session's mining run's)."""
    return ["--config", str(REPO / "configs" / "mine.yaml"), "--output-dir", str(output_dir),
            "corpus.source=parquet", f"corpus.path={planted['path']}", f"corpus.image_root={planted['image_root']}",
            f"embed.model={checkpoints['embedder']}", f"judge.model={checkpoints['judge']}",
            f"retrieval.top_k={TOP_K}", f"select.k={K}", f"select.beta={BETA}", "judge.max_model_len=1024",
            # The planted corpus is 8 bad rows in 65: above the default ceiling on purpose.
            "max_reject_fraction=0.2", *overrides]


def submit_mining(head, planted, checkpoints, output_dir, *extra, overrides=()):
    return submit_job(head, ["python", "jobs/mine.py", *mining_args(planted, checkpoints, output_dir, overrides)],
                      *extra)


@pytest.fixture(scope="session")
def first_run(ray_head, planted_corpus, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("mine1")
    done = submit_mining(ray_head, planted_corpus, checkpoints, out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def wait_for_job(head, job_id: str, timeout: float = 900) -> str:
    """Poll `ray job status` until the job ends; returns SUCCEEDED, FAILED or STOPPED."""
    import re
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([str(BIN / "ray"), "job", "status", "--address", head["address"], job_id],
                             env=head["env"], capture_output=True, text=True, timeout=120)
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # the CLI colours its verdict
        ended = re.search(rf"Job '{re.escape(job_id)}' (?:was )?(succeeded|failed|stopped)", text)
        if ended:
            return ended.group(1).upper()
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")
