"""The mining UDFs called directly on Arrow batches: one row out per row in, errors in a column."""

import asyncio

import numpy as np
import pyarrow as pa
import pytest
from conftest import png_bytes

from unime_ray.data.corpus import TARGET_SCHEMA
from unime_ray.data.images import load_image
from unime_ray.dataplane.embed_stage import EmbedPrepUDF, EmbedUDF
from unime_ray.models.embedder import Embedder
from unime_ray.dataplane.tensors import vectors
from unime_ray.mining.judge_stage import (PREPARED_COLUMNS, TARGET_FIELDS, JudgePrepUDF, JudgeUDF, assemble_query,
                                         explode_pairs, target_rows)
from unime_ray.models.engines.scoring import build_judge
from unime_ray.models.inputs import Item

THIN = png_bytes(size=(2, 600))  # decodes fine; Qwen2-VL's processor refuses aspect ratios over 200


def test_embed_stages_report_bad_rows_and_embed_the_rest(checkpoints, tmp_path):
    prep = EmbedPrepUDF(checkpoints["embedder"], str(tmp_path), 1 << 24, {"min_pixels": 56 * 56, "max_pixels": 224 * 224})
    udf = EmbedUDF(checkpoints["embedder"], "cpu", "float32", 1, budget={"min_pixels": 56 * 56, "max_pixels": 224 * 224})
    batch = pa.Table.from_pylist([
        {"id": "text", "text": "a red square", "dataset": "d"},
        {"id": "image", "image": png_bytes()},
        {"id": "corrupt", "image": b"garbage"},
        {"id": "thin", "image": THIN},
        {"id": "image2", "instruction": "Represent the given image.", "image": png_bytes((0, 0, 255), (900, 600))},
    ], schema=TARGET_SCHEMA)
    prepared = prep(batch)
    fitted = prepared["pixels"].to_pylist()
    assert fitted[0] is None and (fitted[1]["height"], fitted[1]["width"]) == (56, 56)  # 32x32 upscaled to the floor
    assert (fitted[4]["height"], fitted[4]["width"]) == (168, 252)  # 600x900 fitted under 224x224 by the CPU stage
    out = udf(prepared)
    assert out.column_names == [*TARGET_SCHEMA.names, "error", "embedding"]  # input columns carried through
    assert out["dataset"].to_pylist()[0] == "d"
    assert pa.types.is_fixed_size_list(out["embedding"].type) and out["embedding"].type.list_size == 64
    matrix, errors = vectors(out["embedding"]), out["error"].to_pylist()
    assert out["embedding"].is_valid().to_pylist() == [True, True, False, False, True]
    for good in (0, 1, 4):
        assert errors[good] is None and abs(np.linalg.norm(matrix[good]) - 1) < 1e-5
    assert "cannot be decoded" in errors[2] and errors[3].startswith("embedding failed: ValueError")
    # The same vectors as the embedder gives the raw items: the CPU stage's fit is the processor's own.
    embedder = Embedder.from_pretrained(checkpoints["embedder"], min_pixels=56 * 56, max_pixels=224 * 224)
    raw = embedder.embed([Item(text="a red square"), Item(image=load_image(png_bytes(), None, None)),
                          Item("Represent the given image.", "", load_image(png_bytes((0, 0, 255), (900, 600)), None, None))])
    assert np.allclose(raw, matrix[[0, 1, 4]], atol=1e-5)
    half = EmbedUDF(checkpoints["embedder"], "cpu", "float32", 1, "float16")
    assert vectors(half(prepared.slice(0, 1))["embedding"]).dtype == np.float16


def _judge_rows(queries: list[dict], targets: list[dict]) -> pa.Table:
    """Judge rows built the way the pairs stage builds them, with the join done by hand."""
    pairs = explode_pairs(pa.Table.from_pylist(queries))
    right = target_rows(pa.Table.from_pylist(targets, schema=TARGET_SCHEMA))
    by_id = {row["target_id"]: row for row in right.to_pylist()}
    joined = [{**pair, **by_id.get(pair["target_id"], {})} for pair in pairs.to_pylist()]
    schema = pa.unify_schemas([pairs.schema, right.schema])
    table = pa.Table.from_pylist(joined, schema=schema)
    return pa.concat_tables([assemble_query(table.filter(pa.compute.equal(table["query_id"], q["id"])))
                             for q in queries])


def test_judge_stages_score_positive_first_and_isolate_failures(checkpoints, tmp_path):
    targets = [{"id": "t_text", "text": "a red square"}, {"id": "t_image", "image": png_bytes((0, 200, 0))},
               {"id": "t_thin", "image": THIN}, {"id": "t_big", "image": png_bytes((9, 9, 9), size=(2000, 2000))}]
    base = {"dataset": "d", "instruction": None, "text": None, "image": None, "image_path": None, "row": 0}
    queries = [
        {**base, "id": "q1", "instruction": "Find the image:", "text": "a green square", "positive_id": "t_image",
         "candidate_ids": ["t_text", "t_thin", "t_missing", "t_big"]},
        {**base, "id": "q2", "image": b"garbage", "positive_id": "t_text", "candidate_ids": ["t_image"]},
    ]
    rows = _judge_rows(queries, targets)
    assert rows["target_ids"].to_pylist() == [["t_image", "t_text", "t_thin", "t_missing", "t_big"],
                                              ["t_text", "t_image"]]
    prep = JudgePrepUDF(checkpoints["judge"], str(tmp_path), 1 << 24, 2048, 56 * 56, 448 * 448)
    prepared = prep(rows)
    # The CPU stage did the image work: the 2000x2000 target arrives fitted to the budget.
    big = prepared["target_pixels"].to_pylist()[0][4]
    assert (big["height"], big["width"]) == (448, 448) and len(big["rgb"]) == 448 * 448 * 3
    assert prepared["pair_prompts"].to_pylist()[0][2] is None  # the thin image never reaches the engine
    udf = JudgeUDF("transformers", 4, 1, model=checkpoints["judge"], batch_size=8, min_pixels=56 * 56,
                   max_pixels=448 * 448)
    out = asyncio.run(udf(prepared))
    assert out.column_names[:len(rows.column_names)] == rows.column_names  # carried through
    assert not set(PREPARED_COLUMNS) & set(out.column_names)  # the raw pixels are not written out
    q1, q2 = out.select(["id", "positive_score", "candidate_scores", "pair_errors", "error"]).to_pylist()
    assert q1["error"] is None and q1["candidate_scores"][1:3] == [None, None]
    assert "aspect ratio" in q1["pair_errors"][2] and "t_missing" in q1["pair_errors"][3]
    assert q2["error"].startswith("query image") and q2["positive_score"] is None
    # The scores are the judge's own on the raw pairs, positive first: recompute them directly.
    query = Item("Find the image:", "a green square")
    expected = build_judge("transformers", model=checkpoints["judge"], min_pixels=56 * 56, max_pixels=448 * 448).score([
        (query, Item(image=load_image(png_bytes((0, 200, 0)), None, None))), (query, Item(text="a red square")),
        (query, Item(image=load_image(png_bytes((9, 9, 9), size=(2000, 2000)), None, None)))])
    assert [q1["positive_score"], q1["candidate_scores"][0], q1["candidate_scores"][3]] == pytest.approx(
        [r.score for r in expected], abs=1e-6)
    assert set(TARGET_FIELDS.values()) <= set(out.column_names)


def test_the_engine_stage_keeps_several_batches_in_flight(checkpoints, tmp_path):
    """Ray Data runs an async UDF's batches concurrently; the engine gets them together."""
    rows = _judge_rows([{"dataset": "d", "instruction": None, "text": f"shape {i}", "image": None,
                         "image_path": None, "row": i, "id": f"q{i}", "positive_id": "t", "candidate_ids": []}
                        for i in range(6)], [{"id": "t", "text": "a red square"}])
    prepared = JudgePrepUDF(checkpoints["judge"], None, 1 << 24, 2048, None, None)(rows)
    udf = JudgeUDF("transformers", 2, 1, model=checkpoints["judge"], batch_size=8)

    async def three_batches():
        return await asyncio.gather(*(udf(prepared.slice(i, 2)) for i in range(0, 6, 2)))

    outs = asyncio.run(three_batches())
    assert udf.peak_in_flight == 2  # bounded by max_concurrent_batches, and reached
    assert [r["id"] for out in outs for r in out.to_pylist()] == [f"q{i}" for i in range(6)]
