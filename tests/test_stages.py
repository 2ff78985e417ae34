"""The mining UDFs called directly on Arrow batches: one row out per row in, errors in a column."""

import numpy as np
import pyarrow as pa
import pytest
from conftest import png_bytes

from unime_ray.data.corpus import TARGET_SCHEMA
from unime_ray.data.images import load_image
from unime_ray.dataplane.embed_stage import EmbedUDF
from unime_ray.dataplane.tensors import vectors
from unime_ray.mining.judge_stage import TARGET_FIELDS, JudgeUDF, assemble_query, explode_pairs, target_rows
from unime_ray.models.engines.scoring import build_judge
from unime_ray.models.inputs import Item

THIN = png_bytes(size=(2, 600))  # decodes fine; Qwen2-VL's processor refuses aspect ratios over 200


def test_embed_udf_reports_bad_rows_and_embeds_the_rest(checkpoints, tmp_path):
    udf = EmbedUDF(checkpoints["embedder"], "cpu", "float32", str(tmp_path), 1 << 24, 1)
    batch = pa.Table.from_pylist([
        {"id": "text", "text": "a red square", "dataset": "d"},
        {"id": "image", "image": png_bytes()},
        {"id": "corrupt", "image": b"garbage"},
        {"id": "thin", "image": THIN},
        {"id": "image2", "instruction": "Represent the given image.", "image": png_bytes((0, 0, 255))},
    ], schema=TARGET_SCHEMA)
    out = udf(batch)
    assert out.column_names == [*TARGET_SCHEMA.names, "embedding", "error"]  # input columns carried through
    assert out["dataset"].to_pylist()[0] == "d"
    assert pa.types.is_fixed_size_list(out["embedding"].type) and out["embedding"].type.list_size == 64
    matrix, errors = vectors(out["embedding"]), out["error"].to_pylist()
    assert out["embedding"].is_valid().to_pylist() == [True, True, False, False, True]
    for good in (0, 1, 4):
        assert errors[good] is None and abs(np.linalg.norm(matrix[good]) - 1) < 1e-5
    assert "cannot be decoded" in errors[2] and errors[3].startswith("embedding failed")
    # The good rows of the failed batch got the same vectors as when embedded alone.
    alone = vectors(udf(batch.slice(1, 1))["embedding"])[0]
    assert np.allclose(alone, matrix[1], atol=1e-5)
    half = EmbedUDF(checkpoints["embedder"], "cpu", "float32", str(tmp_path), 1 << 24, 1, "float16")
    assert vectors(half(batch.slice(0, 1))["embedding"]).dtype == np.float16


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


def test_judge_udf_scores_positive_first_and_isolates_failures(checkpoints, tmp_path):
    targets = [{"id": "t_text", "text": "a red square"}, {"id": "t_image", "image": png_bytes((0, 200, 0))},
               {"id": "t_thin", "image": THIN}]
    base = {"dataset": "d", "instruction": None, "text": None, "image": None, "image_path": None, "row": 0}
    queries = [
        {**base, "id": "q1", "instruction": "Find the image:", "text": "a green square", "positive_id": "t_image",
         "candidate_ids": ["t_text", "t_thin", "t_missing"]},
        {**base, "id": "q2", "image": b"garbage", "positive_id": "t_text", "candidate_ids": ["t_image"]},
    ]
    rows = _judge_rows(queries, targets)
    assert rows["target_ids"].to_pylist() == [["t_image", "t_text", "t_thin", "t_missing"], ["t_text", "t_image"]]
    udf = JudgeUDF("transformers", str(tmp_path), 1 << 24, 1, model=checkpoints["judge"], batch_size=8)
    out = udf(rows)
    assert out.column_names[:len(rows.column_names)] == rows.column_names  # carried through
    q1, q2 = out.select(["id", "positive_score", "candidate_scores", "error"]).to_pylist()
    assert q1["error"] is None and q1["candidate_scores"][1:] == [None, None]
    assert q2["error"].startswith("query image") and q2["positive_score"] is None
    # The scores are the judge's own, positive first: recompute them directly.
    query = Item("Find the image:", "a green square")
    expected = build_judge("transformers", model=checkpoints["judge"]).score([
        (query, Item(image=load_image(png_bytes((0, 200, 0)), None, None))), (query, Item(text="a red square"))])
    assert [q1["positive_score"], q1["candidate_scores"][0]] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert set(TARGET_FIELDS.values()) <= set(out.column_names)
