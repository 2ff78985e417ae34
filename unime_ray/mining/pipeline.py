"""The mining job: corpus -> embed -> retrieve -> judge -> select (METHOD.md 1-3).

Each stage writes under ``OUTPUT_DIR/stages/<name>`` and is recorded in the manifest,
so a killed job resumes at the first incomplete stage. Results: ``mined.parquet``,
``rejects.parquet``, ``summary.json`` (and ``mined.json`` on request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unime_ray import metrics
from unime_ray.data.corpus import Corpus, rejects_table
from unime_ray.data.validate import ERROR_COLUMN, check_rows, cross_row_errors
from unime_ray.mining.config import CorpusConfig, MineConfig
from unime_ray.mining.manifest import Manifest, fingerprint, path_signature
from unime_ray.mining.retrieval import build_index, search_excluding_positive
from unime_ray.mining.select import seeded_rng, select_hard_negatives
from unime_ray.mining.stages import ActorStage, JudgeUDF, embed_dataset, embeddings_matrix, table_dataset

logger = logging.getLogger(__name__)

MINED_IMAGES = "images"  # bytes-only images are written here, under the output dir
CORPUS_IMAGES = "corpus_images"  # a link to the corpus' image root, under the output dir


def load_corpus(c: CorpusConfig) -> Corpus:
    if c.source == "easyvqa":
        from unime_ray.data.easyvqa import build_easyvqa_corpus

        corpus = build_easyvqa_corpus(c.num_images, c.seed)
    elif c.source == "parquet":
        corpus = Corpus.load(c.path, c.image_root)
    else:
        from unime_ray.data.unime_json import read_unime_json

        corpus = read_unime_json(c.path, c.image_root)
    if c.image_root:
        corpus.image_root = c.image_root
    if c.limit:
        corpus.queries = corpus.queries.slice(0, c.limit)
    return corpus


def _checked(table: pa.Table, image_root: str | None, max_pixels: int) -> pa.Table:
    """Per-row checks as a Ray Data map over the table (order kept by the job)."""
    import ray

    table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
    # Several blocks, so image decoding spreads over tasks (one table is one block).
    ds = table_dataset(table, blocks=max(1, table.num_rows // 256), batch_size=64).map_batches(
        check_rows, fn_kwargs={"image_root": image_root, "max_pixels": max_pixels},
        batch_format="pyarrow", num_cpus=0.25)
    return pa.concat_tables(ray.get(ds.to_arrow_refs())) if table.num_rows else table.append_column(
        ERROR_COLUMN, pa.nulls(0, pa.string()))


def _split(table: pa.Table, errors: list, name: str) -> tuple[pa.Table, list[dict]]:
    mask = pa.array([e is None for e in errors])
    rejects = [
        {"table": name, "id": i, "row": r, "reason": e}
        for i, r, e in zip(table.column("id").to_pylist(), table.column("row").to_pylist(), errors) if e
    ]
    return table.filter(mask).drop_columns(["row", ERROR_COLUMN]), rejects


def stage_corpus(config: MineConfig, out: Path) -> dict:
    corpus = load_corpus(config.corpus)
    max_pixels = config.corpus.max_image_pixels
    queries = _checked(corpus.queries, corpus.image_root, max_pixels)
    targets = _checked(corpus.targets, corpus.image_root, max_pixels)
    query_errors, target_errors = cross_row_errors(queries, targets)
    queries, query_rejects = _split(queries, query_errors, "queries")
    targets, target_rejects = _split(targets, target_errors, "targets")
    query_rejects = corpus.rejects + query_rejects  # records the reader could not parse
    for reject in query_rejects + target_rejects:
        logger.warning("rejected %s row %s (id %r): %s", reject["table"], reject["row"], reject["id"], reject["reason"])
    metrics.inc("rows_rejected", len(query_rejects) + len(target_rejects))
    Corpus(queries, targets).save(out)
    pq.write_table(rejects_table(query_rejects + target_rejects), out / "rejects.parquet")
    return {"image_root": corpus.image_root, "queries_in": corpus.queries.num_rows + len(corpus.rejects),
            "targets_in": corpus.targets.num_rows, "queries": queries.num_rows, "targets": targets.num_rows}


def stage_embed(config: MineConfig, corpus_dir: Path, image_root: str | None, out: Path) -> dict:
    for name in ("queries", "targets"):
        table = pq.read_table(corpus_dir / f"{name}.parquet")
        embed_dataset(table, config.embed, image_root, config.corpus.max_image_pixels).write_parquet(str(out / name))
    return {}


def stage_retrieve(config: MineConfig, corpus_dir: Path, embed_dir: Path, out: Path) -> dict:
    r = config.retrieval
    queries = pq.read_table(corpus_dir / "queries.parquet", columns=["id", "positive_id"])
    target_ids = pq.read_table(corpus_dir / "targets.parquet", columns=["id"]).column("id").to_pylist()
    embedded = {name: pq.read_table(embed_dir / name) for name in ("queries", "targets")}
    t_emb, t_ids = embeddings_matrix(embedded["targets"], target_ids)
    q_emb, q_ids = embeddings_matrix(embedded["queries"], queries.column("id").to_pylist())
    # Rows that passed validation but failed to embed: reported here, not silently lost.
    rejects = [{"table": name, "id": row["id"], "row": None, "reason": row["error"]}
               for name, table in embedded.items() for row in table.select(["id", "error"]).to_pylist()
               if row["error"]]
    pq.write_table(rejects_table(rejects), out / "rejects.parquet")
    metrics.inc("rows_rejected", len(rejects))
    if not t_ids or not q_ids:
        raise RuntimeError(f"nothing to search: {len(q_ids)} queries and {len(t_ids)} targets were embedded "
                           f"(see the embed stage's error column under {embed_dir})")
    row_of = {tid: i for i, tid in enumerate(t_ids)}
    positive_of = dict(zip(queries.column("id").to_pylist(), queries.column("positive_id").to_pylist()))
    # A positive that failed to embed is not in the index: -1 excludes nothing. The judge
    # still scores the pair (it needs no embedding), so the query is mined as usual.
    positives = np.array([row_of.get(positive_of[q], -1) for q in q_ids], dtype=np.int64)
    index = build_index(t_emb, r.index, nlist=r.nlist, nprobe=r.nprobe, hnsw_m=r.hnsw_m,
                        ef_search=r.ef_search, use_gpu=r.use_gpu)
    ids, sims = search_excluding_positive(index, q_emb, positives, r.top_k, r.query_chunk_size)
    pq.write_table(pa.table({
        "id": q_ids,
        "candidate_ids": pa.array([[t_ids[i] for i in row] for row in ids], pa.list_(pa.string())),
        "candidate_sims": pa.array(sims, pa.list_(pa.float32())),
    }), out / "candidates.parquet")
    return {"queries_embedded": len(q_ids), "targets_embedded": len(t_ids), "dim": int(t_emb.shape[1]),
            "rejected": len(rejects)}


def stage_judge(config: MineConfig, corpus_dir: Path, retrieve_dir: Path, image_root: str | None, out: Path) -> dict:
    j = config.judge
    queries = pq.read_table(corpus_dir / "queries.parquet")
    candidates = pq.read_table(retrieve_dir / "candidates.parquet")
    candidate_ids = dict(zip(candidates.column("id").to_pylist(), candidates.column("candidate_ids").to_pylist()))
    # Queries that failed to embed have no candidates; they are reported at selection.
    queries = queries.filter(pc.is_in(queries.column("id"), pa.array(list(candidate_ids), pa.string())))
    queries = queries.sort_by("id")
    rows = queries.append_column(
        "candidate_ids", pa.array([candidate_ids[q] for q in queries.column("id").to_pylist()], pa.list_(pa.string())))
    rows = rows.select(list(JudgeUDF.INPUT_COLUMNS))
    stage = ActorStage.from_config(j)
    ds = stage.dataset(rows).map_batches(
        JudgeUDF,
        fn_constructor_kwargs={"backend": j.backend, "targets_path": str(corpus_dir / "targets.parquet"),
                               "image_root": image_root, "max_pixels": config.corpus.max_image_pixels,
                               "torch_threads": j.torch_threads, **j.engine_arguments()},
        **stage.map_batches_kwargs())
    ds.write_parquet(str(out / "scores"))
    return {"pairs": int(pc.sum(pc.list_value_length(rows.column("candidate_ids"))).as_py() or 0) + rows.num_rows}


class ImageRefs:
    """Image references of mined records, relative to the output directory.

    Corpus files are reached through a link to the corpus' image root; bytes-only
    images are written once, named by content hash. Either way the records are
    self-contained under the output directory, which is their image root.
    """

    def __init__(self, output_dir: Path, corpus_image_root: str | None):
        self.output_dir = output_dir
        if corpus_image_root:
            link = output_dir / CORPUS_IMAGES
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(corpus_image_root).resolve(), target_is_directory=True)

    def __call__(self, row: dict) -> str:
        if row.get("image") is not None:
            name = hashlib.sha1(row["image"]).hexdigest() + ".img"
            path = self.output_dir / MINED_IMAGES / name
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(row["image"])
            return f"{MINED_IMAGES}/{name}"
        if row.get("image_path"):
            return f"{CORPUS_IMAGES}/{row['image_path']}"
        return ""


def stage_select(config: MineConfig, corpus_dir: Path, retrieve_dir: Path, judge_dir: Path,
                 image_root: str | None, out: Path) -> dict:
    s = config.select
    queries = {r["id"]: r for r in pq.read_table(corpus_dir / "queries.parquet").to_pylist()}
    targets = {r["id"]: r for r in pq.read_table(corpus_dir / "targets.parquet").to_pylist()}
    candidates = {r["id"]: r for r in pq.read_table(retrieve_dir / "candidates.parquet").to_pylist()}
    scores = sorted(pq.read_table(judge_dir / "scores").to_pylist(), key=lambda r: r["id"])
    refs = ImageRefs(Path(config.output_dir), image_root)
    records, rejects = [], []
    counts = Counter()
    for judged in scores:
        query = queries[judged["id"]]
        if judged["error"]:
            rejects.append({"table": "queries", "id": query["id"], "row": None, "reason": judged["error"]})
            continue
        cand_ids = candidates[query["id"]]["candidate_ids"]
        ok = [i for i, score in enumerate(judged["candidate_scores"]) if score is not None]
        counts["pairs_failed"] += len(cand_ids) - len(ok)
        if not ok:
            rejects.append({"table": "queries", "id": query["id"], "row": None, "reason": "no candidate could be judged"})
            continue
        cand_ids = [cand_ids[i] for i in ok]
        cand_scores = [judged["candidate_scores"][i] for i in ok]
        pick = select_hard_negatives(cand_scores, judged["positive_score"], rule=s.rule, beta=s.beta,
                                     margin=s.margin, k=s.k, step=s.step, rng=seeded_rng(query["id"], s.seed))
        counts["false_negatives_dropped"] += pick.dropped
        counts["fallbacks"] += pick.fallback
        counts["negatives_kept"] += len(pick.indices)
        negatives = [targets[cand_ids[i]] for i in pick.indices]
        positive = targets[query["positive_id"]]
        records.append({
            "query_id": query["id"], "dataset": query["dataset"],
            "query_instruction": query["instruction"] or "", "query_text": query["text"] or "", "query_image": refs(query),
            "positive_id": positive["id"], "pos_instruction": positive["instruction"] or "",
            "pos_text": positive["text"] or "", "pos_image": refs(positive),
            "query_pos_score": judged["positive_score"],
            "neg_ids": [n["id"] for n in negatives], "neg_instructions": [n["instruction"] or "" for n in negatives],
            "neg_texts": [n["text"] or "" for n in negatives], "neg_images": [refs(n) for n in negatives],
            "neg_scores": pick.scores, "used_fallback": pick.fallback, "false_negatives_dropped": pick.dropped,
        })
    metrics.inc("false_negatives_dropped", counts["false_negatives_dropped"])
    metrics.inc("negatives_kept", counts["negatives_kept"])
    metrics.inc("fallbacks_used", counts["fallbacks"])
    metrics.inc("rows_rejected", len(rejects))
    pq.write_table(pa.Table.from_pylist(records), out / "mined.parquet")
    pq.write_table(rejects_table(rejects), out / "rejects.parquet")
    return {"records": len(records), "rejected": len(rejects), **counts}


def _publish(stage_dir: Path, name: str, output_dir: Path) -> Path:
    """Copy a stage file to the top of the output directory (atomically)."""
    target = output_dir / name
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes((stage_dir / name).read_bytes())
    os.replace(tmp, target)
    return target


def run_mining(config: MineConfig) -> dict:
    """Run (or resume) the whole job; returns the summary it writes."""
    import ray
    import ray.data

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=config.ray_address)
    # Deterministic order, so a resumed job writes the same records as an uninterrupted one.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    manifest = Manifest(output_dir)
    dump = lambda section: section.model_dump(mode="json")  # noqa: E731
    j = config.judge
    fp_corpus = fingerprint(dump(config.corpus), path_signature(config.corpus.path))
    fp_embed = fingerprint(fp_corpus, config.embed.model, path_signature(config.embed.model), config.embed.dtype)
    fp_retrieve = fingerprint(fp_embed, dump(config.retrieval))
    fp_judge = fingerprint(fp_retrieve, j.backend, j.model, path_signature(j.model), j.dtype, j.max_model_len,
                           j.engine_kwargs)
    fp_select = fingerprint(fp_judge, dump(config.select), config.output_dir)

    corpus_info = manifest.run("corpus", fp_corpus, lambda out: stage_corpus(config, out))
    image_root = corpus_info["image_root"]
    corpus_dir = manifest.stage_dir("corpus")
    manifest.run("embed", fp_embed, lambda out: stage_embed(config, corpus_dir, image_root, out))
    retrieve_info = manifest.run("retrieve", fp_retrieve,
                                 lambda out: stage_retrieve(config, corpus_dir, manifest.stage_dir("embed"), out))
    judge_info = manifest.run("judge", fp_judge, lambda out: stage_judge(
        config, corpus_dir, manifest.stage_dir("retrieve"), image_root, out))
    select_info = manifest.run("select", fp_select, lambda out: stage_select(
        config, corpus_dir, manifest.stage_dir("retrieve"), manifest.stage_dir("judge"), image_root, out))

    select_dir = manifest.stage_dir("select")
    mined = _publish(select_dir, "mined.parquet", output_dir)
    rejects = pa.concat_tables([pq.read_table(manifest.stage_dir(stage) / "rejects.parquet")
                                for stage in ("corpus", "retrieve", "select")])
    pq.write_table(rejects, output_dir / "rejects.parquet")
    if config.write_unime_json:
        from unime_ray.data.unime_json import write_unime_json

        write_unime_json(pq.read_table(mined), output_dir / "mined.json")
    summary = {
        "queries_in": corpus_info["queries_in"],
        "targets_in": corpus_info["targets_in"],
        "rows_rejected": rejects.num_rows,
        "rejected_by_reason": dict(Counter(_reason_kind(r) for r in rejects.column("reason").to_pylist())),
        "targets_indexed": retrieve_info["targets_embedded"],
        "pairs_judged": judge_info["pairs"],
        "records": select_info["records"],
        "false_negatives_dropped": select_info.get("false_negatives_dropped", 0),
        "negatives_kept": select_info.get("negatives_kept", 0),
        "fallbacks_used": select_info.get("fallbacks", 0),
        "judge_pairs_failed": select_info.get("pairs_failed", 0),
        "image_root": str(output_dir.resolve()),
        "stage_seconds": manifest.timings(),
        "outputs": {"mined": str(mined), "rejects": str(output_dir / "rejects.parquet")},
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("mining done: %d records, %d rejected rows, %d pairs judged -> %s",
                summary["records"], summary["rows_rejected"], summary["pairs_judged"], output_dir)
    return summary


def _reason_kind(reason: str) -> str:
    """A reason without its row-specific details, for counting ('image file ... not found')."""
    for kind in ("not found", "cannot be decoded", "escapes the image root", "empty item", "unknown positive",
                 "embedding failed",
                 "was rejected", "duplicate", "over the limit", "positive pair failed", "no candidate"):
        if kind in reason:
            return kind
    return reason.split(":")[0]
