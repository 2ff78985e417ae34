"""The mining job: corpus -> embed -> retrieve -> pairs -> judge -> select (METHOD.md 1-3).

Every stage is Ray Data from Parquet to Parquet: the driver holds the config, paths,
counts and actor handles, never rows. Each stage writes under ``OUTPUT_DIR/stages/<name>``
and is recorded in the manifest, so a killed job resumes at the first incomplete stage.
Results: ``mined.parquet/`` and ``rejects.parquet/`` (directories of shards),
``summary.json``, and ``mined.json`` on request.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from unime_ray import metrics
from unime_ray.data.corpus import QUERY_SCHEMA, REJECT_SCHEMA, TARGET_SCHEMA
from unime_ray.data.image_refs import link_image_root
from unime_ray.data.rejects import as_rejects, check_reject_fraction, rejected_by_reason
from unime_ray.data.sources import ROW_COLUMN, corpus_files, read_corpus
from unime_ray.data.validate import ERROR_COLUMN, check_positives, check_rows, mark_duplicates, positive_status
from unime_ray.dataplane.embed_stage import embed_dataset
from unime_ray.dataplane.io import (column_sums, count_rows, distinct_values, publish, read_dataset,
                                    rows_where_error, write_dataset, write_resumable)
from unime_ray.mining.config import MineConfig
from unime_ray.mining.judge_stage import judge_dataset, pair_inputs
from unime_ray.mining.label_judge import label_judge_dataset
from unime_ray.mining.manifest import Manifest, fingerprint, path_signature, reuse_stages
from unime_ray.mining.select_stage import RECORD_SCHEMA, SELECTED_SCHEMA, select_records, with_positive_sims
from unime_ray.retrieval.config import RetrievalConfig
from unime_ray.retrieval.shards import index_shards, search_dataset

logger = logging.getLogger(__name__)

def _checked(ds, image_root: str | None, max_pixels: int):
    return ds.map_batches(check_rows, fn_kwargs={"image_root": image_root, "max_pixels": max_pixels},
                          batch_size=64, batch_format="pyarrow", num_cpus=0.25)


def stage_corpus(config: MineConfig, out: Path) -> dict:
    """Read, check and split the corpus: valid ``queries/`` and ``targets/``, ``rejects/``."""
    files = corpus_files(config.corpus, out / "source")
    queries, targets = read_corpus(files, config.corpus.limit)
    max_pixels, parts = config.corpus.max_image_pixels, config.shuffle_partitions
    targets = mark_duplicates(_checked(targets, files.image_root, max_pixels), "target").materialize()
    queries = mark_duplicates(_checked(queries, files.image_root, max_pixels), "query")
    queries = check_positives(queries, positive_status(targets), parts).materialize()
    counts = {}
    for name, ds, schema in (("queries", queries, QUERY_SCHEMA), ("targets", targets, TARGET_SCHEMA)):
        keep = schema.names + [ROW_COLUMN]
        counts[name] = write_dataset(rows_where_error(ds, failed=False).select_columns(keep), out / name)
        write_dataset(as_rejects(ds, name), out / "rejects" / name, REJECT_SCHEMA)
    if files.rejects:  # records the source's reader could not parse
        publish({"reader": Path(files.rejects)}, out / "rejects" / "reader")
    rejected = {name: count_rows(path) for name, path in
                (("queries", out / "rejects" / "queries"), ("targets", out / "rejects" / "targets"))}
    if files.rejects:
        rejected["queries"] += count_rows(out / "rejects" / "reader")
    metrics.inc("rows_rejected", sum(rejected.values()))
    return {"image_root": files.image_root, "queries": counts["queries"], "targets": counts["targets"],
            "rejected_queries": rejected["queries"], "rejected_targets": rejected["targets"]}


def stage_embed(config: MineConfig, corpus_dir: Path, image_root: str | None, out: Path) -> dict:
    """Embeds queries and targets; resumes by row (a killed run's written blocks are kept)."""
    info = {}
    for name in ("queries", "targets"):
        new = write_resumable(lambda: embed_dataset(read_dataset(corpus_dir / name), config.embed, image_root,
                                                    config.corpus.max_image_pixels),
                              out / name, out / "checkpoints" / name, ROW_COLUMN)
        info[f"{name}_embedded_this_run"] = count_rows(new)
        info[f"{name}_restored"] = count_rows(out / name) - info[f"{name}_embedded_this_run"]
    return info


def unpooled_rejects(batch: pa.Table, pools: list[str]) -> pa.Table:
    """Query rows whose dataset has no pool of targets -> reject rows naming why."""
    keep = pc.invert(pc.fill_null(pc.is_in(batch["dataset"], pa.array(pools, pa.string())), False))
    batch = batch.filter(keep)
    reasons = [f"retrieval.pool_by=dataset: no target of dataset {d!r} to retrieve from" if d is not None
               else "retrieval.pool_by=dataset: the query has no dataset" for d in batch["dataset"].to_pylist()]
    return pa.Table.from_arrays([pa.array(["queries"] * batch.num_rows, pa.string()), batch["id"], batch[ROW_COLUMN],
                                 pa.array(reasons, pa.string())], schema=REJECT_SCHEMA)


def retrieve_in_pools(r: RetrievalConfig, embed_dir: Path, queries, out: Path) -> tuple[int, int]:
    """``retrieval.pool_by=dataset``: per dataset that has both queries and targets, an index
    of its targets searched by its queries; the other queries are rejected. Returns
    (targets indexed, queries searched)."""
    target_pools, query_pools = (distinct_values(embed_dir / name, "dataset", where_null=ERROR_COLUMN)
                                 for name in ("targets", "queries"))  # of the rows that embedded
    pools = sorted(target_pools & query_pools - {None})  # a count of datasets, not of rows
    write_dataset(queries.map_batches(unpooled_rejects, fn_kwargs={"pools": pools}, batch_format="pyarrow"),
                  out / "rejects" / "unpooled", REJECT_SCHEMA)
    indexed = searched = 0
    for number, pool in enumerate(pools):
        with index_shards(r, embed_dir / "targets", pool) as (shards, targets):
            mine = queries.map_batches(lambda b, pool=pool: b.filter(pc.equal(b["dataset"], pool)),
                                       batch_format="pyarrow")
            indexed += targets
            searched += write_dataset(search_dataset(mine, shards, r).drop_columns([ERROR_COLUMN]),
                                      out / "candidates" / f"pool-{number:04d}")
        logger.info("pool %r: %d targets", pool, targets)
    return indexed, searched


def stage_retrieve(config: MineConfig, embed_dir: Path, out: Path) -> dict:
    """Targets go into index shard actors; query blocks are searched in parallel tasks."""
    r = config.retrieval
    for name in ("queries", "targets"):  # rows that passed validation but failed to embed
        failed = read_dataset(embed_dir / name, columns=["id", ROW_COLUMN, ERROR_COLUMN])
        write_dataset(as_rejects(failed, name), out / "rejects" / name, REJECT_SCHEMA)
    queries = rows_where_error(read_dataset(embed_dir / "queries"), failed=False)
    if r.pool_by == "dataset":
        indexed, searched = retrieve_in_pools(r, embed_dir, queries, out)
    else:
        with index_shards(r, embed_dir / "targets") as (shards, indexed):
            searched = write_dataset(search_dataset(queries, shards, r).drop_columns([ERROR_COLUMN]),
                                     out / "candidates")
    rejected = count_rows(out / "rejects")
    metrics.inc("rows_rejected", rejected)
    if not indexed or not searched:
        raise RuntimeError(f"nothing to search: {searched} queries and {indexed} targets were embedded "
                           f"(see the embed stage's error column under {embed_dir})")
    return {"queries_embedded": searched, "targets_embedded": indexed, "rejected": rejected}


def stage_pairs(config: MineConfig, corpus_dir: Path, retrieve_dir: Path, out: Path) -> dict:
    """Every (query, candidate) pair with its target row joined, grouped back by query."""
    rows = pair_inputs(read_dataset(retrieve_dir / "candidates"), read_dataset(corpus_dir / "targets"),
                       config.shuffle_partitions)
    write_dataset(rows, out / "rows")
    pairs = read_dataset(out / "rows", columns=["target_ids"]).map_batches(
        lambda b: pa.table({"n": pc.list_value_length(b["target_ids"])}), batch_format="pyarrow").sum("n")
    return {"queries": count_rows(out / "rows"), "pairs": int(pairs or 0)}


def stage_judge(config: MineConfig, pairs_dir: Path, image_root: str | None, out: Path) -> dict:
    """Scores every pair; resumes by query row, so a killed run re-judges at most the
    blocks that were in flight. Reports the pairs judged by this run, those restored from
    earlier runs, and the prefix cache's share of this run's prompt tokens."""
    def judged():
        if config.judge.labels:
            j = config.judge
            return label_judge_dataset(read_dataset(pairs_dir / "rows"), j.labels, j.label_grading, j.label_partial,
                                       j.label_auc, j.label_seed)
        return judge_dataset(read_dataset(pairs_dir / "rows"), config.judge, image_root,
                             config.corpus.max_image_pixels)

    new = write_resumable(judged, out / "scores", out / "checkpoint", ROW_COLUMN)
    sums = column_sums(new, ["target_ids", "prompt_tokens", "cached_tokens"], {
        "pairs": lambda t: pc.list_value_length(t["target_ids"]), "prompt_tokens": lambda t: t["prompt_tokens"],
        "cached_tokens": lambda t: t["cached_tokens"]})
    rate = sums["cached_tokens"] / sums["prompt_tokens"] if sums["prompt_tokens"] else None
    return {"queries": count_rows(out / "scores"), "pairs_judged_this_run": sums["pairs"],
            "prompt_tokens_this_run": sums["prompt_tokens"], "prefix_cache_hit_rate": rate}


def stage_select(config: MineConfig, judge_dir: Path, embed_dir: Path, out: Path) -> dict:
    """Judged rows -> records under ``config.select``'s rule. The adaptive margin reads each
    candidate's similarity to its positive from exact (flat, CPU) shards of the embed
    stage's target vectors, whatever index retrieval used."""
    judged, r = read_dataset(judge_dir / "scores"), config.retrieval
    with ExitStack() as shards_alive:
        if config.select.rule == "adaptive_margin":
            # Flat shards hold every vector: a reservation sized for another index kind does not fit them.
            flat = r.model_copy(update={"index": "flat", "use_gpu": False, "num_gpus": 0.0,
                                        "memory": r.memory if r.index == "flat" else None})
            shards, _ = shards_alive.enter_context(index_shards(flat, embed_dir / "targets"))
            judged = judged.map_batches(with_positive_sims, fn_kwargs={"shards": shards}, batch_size=256,
                                        batch_format="pyarrow", num_cpus=0.25)
        selected = judged.map_batches(
            select_records, fn_kwargs={"select": config.select, "output_dir": config.output_dir}, batch_size=64,
            batch_format="pyarrow", num_cpus=0.25)
        write_dataset(selected, out / "selected", SELECTED_SCHEMA)
    selected = read_dataset(out / "selected")
    records = write_dataset(rows_where_error(selected, failed=False).select_columns(RECORD_SCHEMA.names),
                            out / "mined", RECORD_SCHEMA)
    rejected = write_dataset(as_rejects(selected.rename_columns({"query_id": "id"}), "queries"),
                             out / "rejects", REJECT_SCHEMA)
    totals = column_sums(out / "mined", ["false_negatives_dropped", "used_fallback", "neg_ids"], {
        "false_negatives_dropped": lambda t: t["false_negatives_dropped"],
        "negatives_kept": lambda t: pc.list_value_length(t["neg_ids"]),
        "fallbacks": lambda t: pc.cast(t["used_fallback"], pa.int64())})
    totals.update(column_sums(out / "selected", ["pairs_failed"], {"pairs_failed": lambda t: t["pairs_failed"]}))
    metrics.inc("false_negatives_dropped", totals["false_negatives_dropped"])
    metrics.inc("negatives_kept", totals["negatives_kept"])
    metrics.inc("fallbacks_used", totals["fallbacks"])
    metrics.inc("rows_rejected", rejected)
    return {"records": records, "rejected": rejected, **totals}


# How a model reads its input, each None unless set (None: the checkpoint's own). Left out of
# fingerprints while None, so that stages recorded before an option existed still match.
# Options added after runs were recorded: they enter a stage's fingerprint only once set,
# so that those runs still match.
READING_OPTIONS = ("format", "pooling", "bidirectional", "pool_by")


def stage_settings(section, include: set[str] | None = None) -> dict:
    """A config section as a stage's fingerprint sees it."""
    unset = {name for name in READING_OPTIONS if name in type(section).model_fields and getattr(section, name) is None}
    return section.model_dump(mode="json", include=include, exclude=unset)


def run_mining(config: MineConfig) -> dict:
    """Run (or resume) the whole job on the connected Ray cluster; returns the summary."""
    import ray.data

    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config.output_dir = str(output_dir)  # workers write image files there
    # Deterministic order, so a resumed job writes the same records as an uninterrupted one.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if config.reuse_from and not (output_dir / "manifest.json").exists():
        finished = Manifest(config.reuse_from).stages
        if not finished:
            raise ValueError(f"reuse_from={config.reuse_from}: no finished stage there (no manifest.json)")
        reuse_stages(config.reuse_from, output_dir, finished)
    manifest = Manifest(output_dir)
    j = config.judge
    rows_in = 0

    def check_rejects(stage_name: str, *stages_with_rejects: str) -> None:
        check_reject_fraction([stage(name) / "rejects" for name in stages_with_rejects], rows_in,
                              config.max_reject_fraction, stage_name)

    fp_corpus = fingerprint(stage_settings(config.corpus), path_signature(config.corpus.path))
    fp_embed = fingerprint(fp_corpus, stage_settings(config.embed), path_signature(config.embed.model))
    fp_retrieve = fingerprint(fp_embed, stage_settings(config.retrieval))
    fp_pairs = fingerprint(fp_retrieve)
    judge_fields = {"backend", "model", "dtype", "max_model_len", "engine_kwargs", "cpu_engine_kwargs", "min_pixels",
                    "max_pixels", "labels", "format"}
    # The label judge's variants enter only when used, so that runs recorded before them still match.
    judge_fields |= {"label_grading", "label_partial"} if j.label_grading == "graded" else set()
    judge_fields |= {"label_auc", "label_seed"} if j.label_auc is not None else set()
    fp_judge = fingerprint(fp_pairs, path_signature(j.model), path_signature(j.labels), stage_settings(j, judge_fields))
    select_settings = stage_settings(config.select)
    if config.select.rule != "adaptive_margin":  # its settings enter only with it: older runs still match
        select_settings = {k: v for k, v in select_settings.items() if not k.startswith("adaptive_")}
    fp_select = fingerprint(fp_judge, select_settings, config.output_dir)
    stage = manifest.stage_dir

    corpus = manifest.run("corpus", fp_corpus, lambda out: stage_corpus(config, out))
    image_root = corpus["image_root"]
    rows_in = corpus["queries"] + corpus["rejected_queries"] + corpus["targets"] + corpus["rejected_targets"]
    check_rejects("corpus", "corpus")
    embed = manifest.run("embed", fp_embed, lambda out: stage_embed(config, stage("corpus"), image_root, out),
                         resumable=True)
    retrieve = manifest.run("retrieve", fp_retrieve, lambda out: stage_retrieve(config, stage("embed"), out))
    check_rejects("retrieve", "corpus", "retrieve")
    pairs = manifest.run("pairs", fp_pairs, lambda out: stage_pairs(config, stage("corpus"), stage("retrieve"), out))
    judge = manifest.run("judge", fp_judge, lambda out: stage_judge(config, stage("pairs"), image_root, out),
                         resumable=True)
    link_image_root(output_dir, image_root)
    select = manifest.run("select", fp_select,
                          lambda out: stage_select(config, stage("judge"), stage("embed"), out))
    check_rejects("select", "corpus", "retrieve", "select")

    mined = publish({"mined": stage("select") / "mined"}, output_dir / "mined.parquet")
    rejects = publish({name: stage(name) / "rejects" for name in ("corpus", "retrieve", "select")},
                      output_dir / "rejects.parquet")
    if config.write_unime_json:
        from unime_ray.data.unime_json import write_unime_json

        write_unime_json(read_dataset(mined), output_dir / "mined.json")
    rejected = count_rows(rejects)
    summary = {
        "queries_in": corpus["queries"] + corpus["rejected_queries"],
        "targets_in": corpus["targets"] + corpus["rejected_targets"],
        "rows_rejected": rejected,
        "rejected_by_reason": rejected_by_reason(rejects) if rejected else {},
        "targets_indexed": retrieve["targets_embedded"],
        "pairs_judged": pairs["pairs"],
        # By the run that finished the stage; the rest were restored from a killed run's checkpoint.
        "pairs_judged_this_run": judge["pairs_judged_this_run"],
        "pairs_restored": pairs["pairs"] - judge["pairs_judged_this_run"],
        "rows_embedded_this_run": embed["queries_embedded_this_run"] + embed["targets_embedded_this_run"],
        "rows_embed_restored": embed["queries_restored"] + embed["targets_restored"],
        "prompt_tokens_judged": judge["prompt_tokens_this_run"],
        "prefix_cache_hit_rate": judge["prefix_cache_hit_rate"],
        "records": select["records"],
        "false_negatives_dropped": select["false_negatives_dropped"],
        "negatives_kept": select["negatives_kept"],
        "fallbacks_used": select["fallbacks"],
        "judge_pairs_failed": select["pairs_failed"],
        "image_root": str(output_dir),
        "stage_seconds": manifest.timings(),
        "outputs": {"mined": str(mined), "rejects": str(rejects)},
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("mining done: %d records, %d rejected rows, %d pairs judged -> %s",
                summary["records"], summary["rows_rejected"], summary["pairs_judged"], output_dir)
    return summary
