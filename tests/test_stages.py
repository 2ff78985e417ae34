"""The mining UDFs called directly on Arrow batches: one row out per row in, errors in a column."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes

from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA
from unime_ray.data.images import load_image
from unime_ray.mining.judge import build_judge
from unime_ray.mining.stages import EmbedUDF, JudgeUDF
from unime_ray.models.inputs import Item

THIN = png_bytes(size=(2, 600))  # decodes fine; Qwen2-VL's processor refuses aspect ratios over 200


def test_embed_udf_reports_bad_rows_and_embeds_the_rest(checkpoints, tmp_path):
    udf = EmbedUDF(checkpoints["embedder"], "cpu", "float32", str(tmp_path), 1 << 24, 1)
    batch = pa.Table.from_pylist([
        {"id": "text", "text": "a red square"},
        {"id": "image", "image": png_bytes()},
        {"id": "corrupt", "image": b"garbage"},
        {"id": "thin", "image": THIN},
        {"id": "image2", "instruction": "Represent the given image.", "image": png_bytes((0, 0, 255))},
    ], schema=TARGET_SCHEMA).select(list(EmbedUDF.INPUT_COLUMNS))
    out = {r["id"]: r for r in udf(batch).to_pylist()}
    assert list(out) == ["text", "image", "corrupt", "thin", "image2"]
    for good in ("text", "image", "image2"):
        assert out[good]["error"] is None and len(out[good]["embedding"]) == 64
    assert out["corrupt"]["embedding"] is None and "cannot be decoded" in out["corrupt"]["error"]
    assert out["thin"]["embedding"] is None and out["thin"]["error"].startswith("embedding failed")
    # The good rows of the failed batch got the same vectors as when embedded alone.
    alone = udf(batch.slice(1, 1)).to_pylist()[0]["embedding"]
    assert alone == pytest.approx(out["image"]["embedding"], abs=1e-5)


def test_judge_udf_scores_positive_first_and_isolates_failures(checkpoints, tmp_path):
    targets = pa.Table.from_pylist([
        {"id": "t_text", "text": "a red square"},
        {"id": "t_image", "image": png_bytes((0, 200, 0))},
        {"id": "t_thin", "image": THIN},
    ], schema=TARGET_SCHEMA)
    pq.write_table(targets, tmp_path / "targets.parquet")
    udf = JudgeUDF("transformers", str(tmp_path / "targets.parquet"), str(tmp_path), 1 << 24, 1,
                   model=checkpoints["judge"], batch_size=8)
    queries = pa.Table.from_pylist([
        {"id": "q1", "instruction": "Find the image:", "text": "a green square", "positive_id": "t_image"},
        {"id": "q2", "image": b"garbage", "positive_id": "t_text"},
    ], schema=QUERY_SCHEMA).append_column(
        "candidate_ids", pa.array([["t_text", "t_thin", "t_missing"], ["t_image"]], pa.list_(pa.string())))
    out = udf(queries.select(list(JudgeUDF.INPUT_COLUMNS))).to_pylist()
    assert [r["id"] for r in out] == ["q1", "q2"]
    q1, q2 = out
    assert q1["error"] is None and q1["candidate_scores"][1:] == [None, None]
    assert q2["error"].startswith("query image") and q2["positive_score"] is None
    # The scores are the judge's own, positive first: recompute them directly.
    query = Item("Find the image:", "a green square")
    expected = build_judge("transformers", model=checkpoints["judge"]).score([
        (query, Item(image=load_image(png_bytes((0, 200, 0)), None, None))), (query, Item(text="a red square"))])
    assert [q1["positive_score"], q1["candidate_scores"][0]] == pytest.approx([r.score for r in expected], abs=1e-6)
