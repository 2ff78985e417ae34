"""The serving application's config: the ``args`` of ``serve/config.yaml``.

Deployment resources (replicas, autoscaling, GPUs per replica) are Serve's own
per-deployment settings, in the same file's ``deployments:`` section.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from unime_ray.config import StrictModel
from unime_ray.mining.config import CorpusConfig, EmbedConfig
from unime_ray.models.settings import EmbeddingChanges, PixelBudget, RerankSettings
from unime_ray.retrieval.config import RetrievalConfig


class EmbedderSettings(EmbeddingChanges, PixelBudget):
    model: str = Field(".cache/checkpoints/embedder", description="embedder checkpoint: the one the index was built with")
    device: str = Field("cpu", description="'cpu' or 'cuda' (with ray_actor_options.num_gpus)")
    dtype: str = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: items embedded together")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch: wait for a fuller batch")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads per replica")


class IndexSettings(StrictModel):
    path: str = Field("out/demo/index", description="directory written by jobs/build_index.py")
    use_gpu: bool = Field(False, description="move the FAISS index to the replica's GPUs (faiss-gpu)")


class Limits(StrictModel):
    max_body_bytes: int = Field(8 << 20, ge=1, description="larger requests get 413")
    max_items: int = Field(32, ge=1, description="items per /v1/embed request; candidates per /v1/rerank")
    max_top_k: int = Field(100, ge=1, description="largest top_k of /v1/search")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="larger images are refused")
    max_item_tokens: int = Field(
        2048, ge=16, description="an item over this many embedder tokens (text + image at the pixel budget) gets 413")
    request_timeout_s: float = Field(30.0, gt=0, description="a stage slower than this gives 504")


class AuthSettings(StrictModel):
    required: bool = Field(True, description="every route but health needs 'Authorization: Bearer <key>'")
    api_key_env: str = Field("UNIME_API_KEY", description="environment variable that holds the key, on every node")


class ServeAppConfig(StrictModel):
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexSettings = IndexSettings()
    reranker: RerankSettings = RerankSettings()
    limits: Limits = Limits()
    auth: AuthSettings = AuthSettings()


class BuildIndexConfig(StrictModel):
    """``jobs/build_index.py``: the target corpus -> the Index deployment's directory."""

    output_dir: str = Field("out/index", description="index.faiss, targets.parquet, index.json, rejects.parquet")
    corpus: CorpusConfig = CorpusConfig()
    embed: EmbedConfig = EmbedConfig()
    index: RetrievalConfig = RetrievalConfig()


PATH_ARGS = (("embedder", "model"), ("index", "path"), ("reranker", "model"))


def resolve_serve_config(source: str | Path, target: str | Path, overrides: list[str] = (),
                         port: int | None = None) -> dict:
    """Copy a Serve config file with each application's dotted ``args`` overrides applied
    and its relative paths made absolute (replicas run in other directories)."""
    import yaml

    from unime_ray.config import apply_override

    document = yaml.safe_load(Path(source).read_text())
    for application in document["applications"]:
        args = application.setdefault("args", {})
        for override in overrides:
            apply_override(args, override)
        for section, key in PATH_ARGS:
            value = (args.get(section) or {}).get(key)
            if value and not Path(value).is_absolute() and Path(value).exists():
                args[section][key] = str(Path(value).resolve())
        ServeAppConfig.model_validate(args)  # fail here, not in a replica
    if port is not None:
        document.setdefault("http_options", {})["port"] = port
    Path(target).write_text(yaml.safe_dump(document, sort_keys=False))
    return document


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a Serve config with absolute paths and overrides")
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--port", type=int)
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the app's args, e.g. reranker.model=null")
    args = parser.parse_intermixed_args(argv)
    resolve_serve_config(args.source, args.target, args.overrides, args.port)


if __name__ == "__main__":
    main()
