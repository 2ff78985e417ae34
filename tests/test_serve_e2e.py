"""End to end: `jobs/build_index.py` through `ray job submit`, then `serve deploy` of
serve/config.yaml (paths and limits overridden) on the test's Ray head, called over HTTP
on 127.0.0.1 with a real client."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml
from conftest import BIN, REPO, free_port, png_bytes, submit_job

from unime_ray.models.embedder import Embedder
from unime_ray.models.inputs import Item
from unime_ray.serving.config import resolve_serve_config
from unime_ray.serving.index import LoadedIndex

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

LIMITS = ["limits.max_body_bytes=300000", "limits.max_items=4", "limits.max_image_pixels=40000",
          "limits.max_top_k=20", "limits.max_item_tokens=512"]


@pytest.fixture(scope="module")
def index_dir(ray_head, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    done = submit_job(ray_head, ["python", "jobs/build_index.py", "--output-dir", str(out),
                                 f"embed.model={checkpoints['embedder']}", "corpus.num_images=6"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def _deploy(head, config_path) -> None:
    done = subprocess.run([str(BIN / "serve"), "deploy", str(config_path), "--address", head["address"]],
                          env=head["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _wait_ready(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            answer = requests.get(f"{url}/readyz", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or queued until a replica is
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="module")
def service(ray_head, index_dir, checkpoints, tmp_path_factory):
    port, config = free_port(), tmp_path_factory.mktemp("serve") / "serve.yaml"
    overrides = [f"embedder.model={checkpoints['embedder']}", f"index.path={index_dir}",
                 f"reranker.model={checkpoints['reranker']}", "reranker.backend=transformers", "reranker.top_n=3",
                 *LIMITS]
    resolve_serve_config(REPO / "serve/config.yaml", config, overrides, port)
    _deploy(ray_head, config)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    headers = {"Authorization": f"Bearer {ray_head['api_key']}"}
    # The first request after ready, through all three deployments, before any test warms them.
    started = time.perf_counter()
    first = requests.post(f"{url}/v1/search", json={"text": "a red square", "top_k": 4, "rerank": True},
                          headers=headers, timeout=120)
    yield {"url": url, "headers": headers, "config": config, "overrides": overrides, "port": port,
           "first_search": (first.status_code, first.text, time.perf_counter() - started)}
    subprocess.run([str(BIN / "serve"), "shutdown", "-y", "--address", ray_head["address"]], env=ray_head["env"],
                   capture_output=True, timeout=120)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(service, path, body, **kwargs):
    return requests.post(service["url"] + path, json=body, headers=kwargs.pop("headers", service["headers"]),
                         timeout=60, **kwargs)


def test_health_and_readiness(service, index_dir):
    assert requests.get(service["url"] + "/healthz", timeout=10).json() == {"status": "ok"}  # no key needed
    ready = requests.get(service["url"] + "/readyz", timeout=10).json()
    meta = json.loads((index_dir / "index.json").read_text())
    assert ready == {"ready": True, "targets": meta["count"], "dim": meta["dim"], "reranker": True}
    # Ready means every deployment answered, its model warmed by one request: the first
    # search after ready, reranked, completes well within the time limit.
    status, text, seconds = service["first_search"]
    assert status == 200 and len(json.loads(text)["hits"]) == 4, text
    timeout = yaml.safe_load(service["config"].read_text())["applications"][0]["args"]["limits"]["request_timeout_s"]
    assert seconds < timeout / 2, seconds
    assert "/v1/search" in requests.get(service["url"] + "/openapi.json", timeout=10).json()["paths"]


def test_embed_and_search_match_direct_calls(service, checkpoints, index_dir):
    image = png_bytes((30, 200, 30), (64, 64))
    answer = _post(service, "/v1/embed", {"items": [{"text": "a green circle"},
                                                    {"image": _b64(image), "instruction": "Represent the given image."}]})
    assert answer.status_code == 200, answer.text
    from PIL import Image

    direct = Embedder.from_pretrained(checkpoints["embedder"]).embed(
        [Item("", "a green circle"), Item("Represent the given image.", "", Image.open(io.BytesIO(image)).convert("RGB"))])
    served = np.array(answer.json()["embeddings"], dtype=np.float32)
    assert answer.json()["dim"] == direct.shape[1] and np.allclose(served, direct, atol=1e-5)

    query = {"text": "a green circle", "instruction": "Find me an everyday image that matches the given caption:"}
    answer = _post(service, "/v1/search", {**query, "top_k": 5})
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    vector = Embedder.from_pretrained(checkpoints["embedder"]).embed([Item(query["instruction"], query["text"])])
    expected = LoadedIndex(index_dir).search(vector, 5)[0]
    assert [h["id"] for h in hits] == [e["id"] for e in expected]
    assert np.allclose([h["score"] for h in hits], [e["score"] for e in expected], atol=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and answer.json()["reranked"] is False


def test_search_with_rerank_reports_both_stages(service, checkpoints):
    answer = _post(service, "/v1/search", {"text": "a red square", "top_k": 6, "rerank": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    hits = body["hits"]
    assert body["reranked"] is True and [h["rank"] for h in hits] == list(range(1, 7))
    head = [h for h in hits if h["reranker_rank"] is not None]
    assert sorted(h["embedder_rank"] for h in head) == [1, 2, 3]  # the reranker saw the embedder's top 3
    assert sorted(h["reranker_rank"] for h in head) == [1, 2, 3] and hits[:3] == sorted(head, key=lambda h: h["rank"])
    assert [h["embedder_rank"] for h in hits[3:]] == [4, 5, 6]  # the rest keep their places

    # The service honours the reranker's pick: its order is the reranker's own on the same
    # items (constrained listwise, called here directly), and the pick is not always first.
    from unime_ray.data.images import load_image
    from unime_ray.models.reranker import Reranker

    reranker = Reranker.from_pretrained(checkpoints["reranker"], backend="transformers", top_n=3)
    image = png_bytes((200, 0, 0), (64, 64))
    bodies = [{"text": "a blue circle"}, {"text": "a red square"}, {"image": _b64(image)}]
    items = [Item("", "a blue circle"), Item("", "a red square"), Item("", "", load_image(image, None, None, 40000))]
    picks = []
    for shift in range(3):
        answer = _post(service, "/v1/rerank", {"query": {"text": "a red square"},
                                               "candidates": bodies[shift:] + bodies[:shift]})
        assert answer.status_code == 200, answer.text
        direct = reranker.rerank(Item("", "a red square"), items[shift:] + items[:shift])
        assert answer.json()["order"] == direct.order and not answer.json()["fallback"]
        assert np.allclose(answer.json()["scores"], direct.scores, atol=1e-5)
        picks.append(direct.order[0])
    assert any(pick != 0 for pick in picks)


BIG_IMAGE = _b64(png_bytes(size=(300, 300)))  # 90,000 pixels over the test's 40,000 limit


@pytest.mark.parametrize("path,body,status,names", [
    ("/v1/search", {"top_k": 3}, 422, "query"),
    ("/v1/search", {"text": "   "}, 422, "query"),
    ("/v1/search", {"text": "x", "top_k": 0}, 422, "top_k"),
    ("/v1/search", {"text": "x", "top_k": 21}, 422, "top_k"),
    ("/v1/search", {"text": "x", "colour": "red"}, 422, "colour"),
    ("/v1/search", {"text": "x", "top_k": "many"}, 422, "top_k"),
    ("/v1/search", {"image": "not base64!"}, 422, "query.image"),
    ("/v1/search", {"image": _b64(b"plain bytes, no image")}, 422, "query.image"),
    ("/v1/search", {"image": BIG_IMAGE}, 422, "query.image"),
    ("/v1/embed", {"items": []}, 422, "items"),
    ("/v1/embed", {"items": [{"text": "x"}] * 5}, 422, "items"),
    ("/v1/embed", {"items": [{"text": "x"}, {"image": _b64(png_bytes(size=(2, 600)))}]}, 422, "items.1"),
    ("/v1/rerank", {"query": {"text": "x"}, "candidates": [{"text": "y"}]}, 422, "candidates"),
    ("/v1/embed", {"items": [{"text": "x" * 400_000}]}, 413, "body"),
    # Over the token budget (512 here): the item is named, with its size and the limit.
    ("/v1/search", {"text": "word " * 20_000}, 413, "query: "),
    ("/v1/embed", {"items": [{"text": "x"}, {"text": "many words " * 300}]}, 413, "items.1: "),
    ("/v1/rerank", {"query": {"text": "x"}, "candidates": [{"text": "y"}, {"text": "z " * 1000}]}, 413,
     "candidates.1: "),
])
def test_bad_input_gets_a_4xx_that_names_the_field(service, path, body, status, names):
    answer = _post(service, path, body)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["error"], answer.json()
    if status == 413 and names != "body":
        assert re.search(r": \d+ tokens .* the limit is 512$", answer.json()["error"]), answer.json()


def _fuzz_bodies() -> list[tuple[str, object]]:
    """Malformed requests of every kind: over-long texts, extreme images, wrong types,
    unknown fields, broken JSON. Deterministic, so a failure reproduces."""
    import random

    rng = random.Random(0)
    long_texts = ["word " * 20_000, "x" * 250_000, "\u4e2d" * 60_000, "a b " * 30_000]
    images = [_b64(png_bytes(size=(1, 30_000))), _b64(png_bytes(size=(5_000, 5_000))),  # aspect; pixels
              _b64(png_bytes(size=(1000, 3))), _b64(png_bytes()[:60]), _b64(b"\x00" * 1000), "!!!", "=" * 8,
              _b64(b"GIF89a" + b"\x00" * 50), _b64(png_bytes(size=(199, 201)))[:-4] + "@@@@"]
    junk = [None, 0, -1, 3.5, True, [], {}, [1, 2], {"a": {"b": 1}}, {"text": None}]
    items = ([{"text": t} for t in long_texts] + [{"image": i} for i in images]
             + [{"text": "ok", "image": i} for i in images[:4]] + [{"text": j} for j in junk if j is not None]
             + [{"image": j} for j in junk if j is not None] + [{}, {"text": ""}, {"text": " \n\t"},
                                                                   {"bogus": 1}, {"text": "x", "extra": 2}])
    bodies = []
    for item in items:
        bodies += [("/v1/search", {**item, "top_k": 3}), ("/v1/embed", {"items": [{"text": "fine"}, item]}),
                   ("/v1/rerank", {"query": {"text": "q"}, "candidates": [{"text": "c"}, item]})]
    for _ in range(40):
        bodies.append(("/v1/search", {"text": "x", "top_k": rng.choice([0, -5, 10**9, "3", None, [], 21]),
                                      "rerank": rng.choice(["yes", 2, None, {}])}))
    for j in junk:
        bodies += [("/v1/embed", {"items": j}), ("/v1/rerank", {"query": j, "candidates": [{"text": "a"}] * 2}),
                   ("/v1/rerank", {"query": {"text": "q"}, "candidates": j}), ("/v1/search", j)]
    bodies += [("/v1/embed", {"items": [{"text": "x"}] * 50}), ("/v1/embed", b"{not json"), ("/v1/search", b""),
               ("/v1/search", b"[" * 50_000 + b"]" * 50_000), ("/v1/search", b"\xff\xfe garbage"),
               ("/v1/rerank", b'{"query": {"text": "q"}, "candidates": [' + b'{"text":"c"},' * 5000 + b'{}]}')]
    return bodies


def test_a_fuzz_of_malformed_requests_gets_no_5xx(service):
    bodies = _fuzz_bodies()
    assert len(bodies) >= 200

    def one(case):
        path, body = case
        headers = {**service["headers"], "Content-Type": "application/json"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = requests.post(service["url"] + path, data=data, headers=headers, timeout=120)
        return answer.status_code, answer.text[:300], path, str(body)[:120]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, bodies))
    server_errors = [r for r in results if r[0] >= 500]
    assert not server_errors, server_errors[:5]
    refused = [r for r in results if 400 <= r[0] < 500]
    # Only a few random search settings are valid (pydantic reads top_k "3" as 3, rerank "yes" as true).
    assert len(refused) >= len(bodies) - 10, [r[2:] for r in results if r[0] < 400]
    unnamed = [r for r in refused if len(r[1]) < 300 and "error" not in json.loads(r[1])]
    assert not unnamed, unnamed[:3]  # every refusal says why


def test_malformed_json_is_a_422(service):
    answer = requests.post(service["url"] + "/v1/search", data=b"{not json", timeout=30,
                           headers={**service["headers"], "Content-Type": "application/json"})
    assert answer.status_code == 422 and "body" in answer.json()["error"]


def test_a_missing_or_wrong_key_is_a_401(service):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": service["headers"]["Authorization"][:-1]}):
        answer = _post(service, "/v1/search", {"text": "x"}, headers=headers)
        assert answer.status_code == 401 and "authorization" in answer.json()["error"]
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_bounded_load_run_has_no_failures(service):
    """60 searches from 6 client threads, capped at 120 s, loopback only."""
    def one(i):
        return _post(service, "/v1/search", {"text": f"a shape number {i}", "top_k": 5, "rerank": i % 4 == 0})

    started = time.time()
    with ThreadPoolExecutor(6) as pool:
        codes = [r.status_code for r in pool.map(one, range(60), timeout=120)]
    assert codes == [200] * 60 and time.time() - started < 120


def test_auth_off(ray_head, service, tmp_path):
    """Last: redeploys the app with auth off (no key configured)."""
    config = tmp_path / "open.yaml"
    resolve_serve_config(service["config"], config, ["auth.required=false", "auth.api_key_env=UNIME_NO_SUCH_KEY"])
    _deploy(ray_head, config)
    deadline = time.time() + 300
    while time.time() < deadline:
        answer = _post(service, "/v1/search", {"text": "x", "top_k": 2}, headers={})
        if answer.status_code == 200:
            break
        time.sleep(1)
    assert answer.status_code == 200, answer.text
