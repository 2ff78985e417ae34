"""Corpus readers and row validation, with bad rows planted on purpose."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_RECORDS, png_bytes

from unime_ray.config import load_config
from unime_ray.data.corpus import QUERY_SCHEMA, TARGET_SCHEMA, Corpus
from unime_ray.data.easyvqa import build_easyvqa_corpus
from unime_ray.data.images import ImageError, load_image, resolve_path
from unime_ray.data.unime_json import read_unime_json, strip_placeholder, unime_record
from unime_ray.data.sources import read_numbered
from unime_ray.data.validate import check_positives, check_rows, mark_duplicates, positive_status
from unime_ray.dataplane.io import column_sums
from unime_ray.mining.config import MineConfig


def _tables(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes())
    targets = pa.Table.from_pylist([
        {"id": "t_ok", "text": "a red square"},
        {"id": "t_img", "image_path": "ok.png"},
        {"id": "t_corrupt", "image": b"not an image at all"},
        {"id": "t_missing", "image_path": "nowhere.png"},
        {"id": "t_escape", "image_path": "../../etc/passwd"},
        {"id": "t_dup", "text": "one"},
        {"id": "t_dup", "text": "two"},
    ], schema=TARGET_SCHEMA)
    queries = pa.Table.from_pylist([
        {"id": "q_ok", "text": "red?", "positive_id": "t_ok"},
        {"id": "q_img", "image": png_bytes(), "positive_id": "t_img"},
        {"id": "q_empty", "text": "  ", "positive_id": "t_ok"},
        {"id": "q_unknown", "text": "x", "positive_id": "t_nope"},
        {"id": "q_rejected_pos", "text": "x", "positive_id": "t_corrupt"},
        {"id": "q_no_pos", "text": "x"},
    ], schema=QUERY_SCHEMA)
    return queries, targets


def test_every_bad_row_gets_its_own_reason_and_good_rows_pass(tmp_path, local_ray):
    """The per-row checks, then the cross-row ones as Ray Data runs them (a group-by and a join)."""
    import ray.data

    queries, targets = _tables(tmp_path)
    checked = lambda table: ray.data.from_arrow(check_rows(table, str(tmp_path)))  # noqa: E731
    marked = mark_duplicates(checked(targets), "target").materialize()
    t_rows = marked.take_all()
    t = {r["id"]: r["error"] for r in t_rows}
    assert t["t_ok"] is None and t["t_img"] is None
    assert "cannot be decoded" in t["t_corrupt"]
    assert "not found" in t["t_missing"]
    assert "escapes the image root" in t["t_escape"]
    assert [r["error"] for r in t_rows if r["id"] == "t_dup"] == ["duplicate target id 't_dup'"] * 2
    assert sum(r["first_of_id"] for r in t_rows) == len(t) == 6  # the join's side has one row per id
    q_rows = check_positives(mark_duplicates(checked(queries), "query"), positive_status(marked), 2).take_all()
    q = {r["id"]: r["error"] for r in q_rows}
    assert len(q_rows) == queries.num_rows  # the left join kept every query once
    assert q["q_ok"] is None and q["q_img"] is None
    assert q["q_empty"] == "empty item: no text and no image"
    assert q["q_unknown"] == "unknown positive id 't_nope'"
    assert q["q_rejected_pos"] == "positive target 't_corrupt' was rejected"
    assert q["q_no_pos"] == "no positive_id"


def test_corpus_rows_are_numbered_across_files_and_row_groups(tmp_path, local_ray):
    queries, _ = _tables(tmp_path)
    (tmp_path / "q").mkdir()
    pq.write_table(queries.slice(0, 4), tmp_path / "q" / "a.parquet", row_group_size=3)
    pq.write_table(queries.slice(4), tmp_path / "q" / "b.parquet")
    ids = list(enumerate(queries.column("id").to_pylist()))
    rows = read_numbered(str(tmp_path / "q"), QUERY_SCHEMA, "queries").take_all()
    assert sorted((r["row"], r["id"]) for r in rows) == ids
    # a limit keeps the first rows by number, across a row group and a file boundary
    for limit in (2, 5):
        rows = read_numbered(str(tmp_path / "q"), QUERY_SCHEMA, "queries", limit=limit).take_all()
        assert sorted((r["row"], r["id"]) for r in rows) == ids[:limit]


def test_column_sums_add_up_every_shard(tmp_path):
    import pyarrow.compute as pc

    pq.write_table(pa.table({"n": [1, 2], "ids": [["a"], ["b", "c"]]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"n": pa.array([], pa.int64()), "ids": pa.array([], pa.list_(pa.string()))}),
                   tmp_path / "part-1.parquet")  # an empty shard, as an empty stage leaves
    pq.write_table(pa.table({"n": [4], "ids": [["d", "e", "f"]]}), tmp_path / "part-2.parquet")
    assert column_sums(tmp_path, ["n", "ids"], {"n": lambda t: t["n"], "ids": lambda t: pc.list_value_length(
        t["ids"])}) == {"n": 7, "ids": 6}


def test_image_limits_and_paths(tmp_path):
    with pytest.raises(ImageError, match="over the limit"):
        load_image(png_bytes(size=(64, 64)), None, None, max_pixels=100)
    assert load_image(None, None, None) is None
    assert resolve_path("a/b.png", str(tmp_path)) == tmp_path / "a" / "b.png"
    for bad in ("/etc/passwd", "../x.png", "a/../../x.png"):
        with pytest.raises(ImageError, match="escapes"):
            resolve_path(bad, str(tmp_path))


def test_corpus_parquet_round_trip_and_schema_errors(tmp_path):
    queries, targets = _tables(tmp_path)
    Corpus(queries, targets).save(tmp_path / "c")
    loaded = Corpus.load(tmp_path / "c", image_root=str(tmp_path))
    assert loaded.queries.equals(queries) and loaded.targets.equals(targets)
    with pytest.raises(ValueError, match="unknown columns"):
        Corpus(queries.append_column("oops", pa.array([1] * queries.num_rows)), targets)
    with pytest.raises(ValueError, match="no column 'id'"):
        Corpus(queries.drop_columns(["id"]), targets)


def test_easyvqa_corpus_is_made_of_real_rows():
    from easy_vqa import get_train_questions

    corpus = build_easyvqa_corpus(num_images=10, seed=3)
    questions, answers, image_ids = get_train_questions()
    real = set(zip(questions, answers, image_ids))
    rows = corpus.queries.to_pylist()
    assert len(rows) == 30 and {r["dataset"] for r in rows} == {"easyvqa_vqa", "easyvqa_i2t", "easyvqa_t2i"}
    targets = {t["id"] for t in corpus.targets.to_pylist()}
    for row in rows:
        assert row["positive_id"] in targets
        if row["dataset"] == "easyvqa_vqa":
            image_id = int(row["id"].split(":")[1])
            assert (row["text"], row["positive_id"].removeprefix("ans:"), image_id) in real
    assert not any(check_rows(corpus.queries, corpus.image_root).column("error").to_pylist())
    assert build_easyvqa_corpus(10, seed=3).queries.equals(corpus.queries)  # seeded
    assert not build_easyvqa_corpus(10, seed=4).queries.equals(corpus.queries)


@pytest.mark.skipif(not SHARED_RECORDS.exists(), reason="../shared/data is not beside this checkout")
def test_unime_json_reader_on_the_published_records(tmp_path):
    corpus = read_unime_json(SHARED_RECORDS, image_root=str(tmp_path))
    records = json.loads(SHARED_RECORDS.read_text())
    assert corpus.queries.num_rows == 50
    first = corpus.queries.to_pylist()[0]
    assert first["text"] == strip_placeholder(records[0]["query_text"]) and "<|image_1|>" not in first["text"]
    assert first["image_path"] == records[0]["query_image"]
    # Positives and published hard negatives are targets, deduplicated by content.
    assert corpus.targets.num_rows == len({(t, i) for r in records for t, i in
                                           [(r["pos_text"], r["pos_image"]), *map(tuple, r["hard_negatives"])]})
    # MMEB-train images are not here: exactly the image rows are rejected, as missing.
    errors = check_rows(corpus.queries, str(tmp_path)).column("error").to_pylist()
    assert [e is not None for e in errors] == [bool(r["query_image"]) for r in records]
    assert all("not found" in e for e in errors if e)


def test_unime_json_record_layout():
    record = unime_record({
        "query_instruction": "Represent the given image with the following question:", "query_text": "what?",
        "query_image": "images/a.png", "pos_instruction": "", "pos_text": "circle", "pos_image": "",
        "query_pos_score": 0.7, "neg_instructions": ["", ""], "neg_texts": ["red", "blue"],
        "neg_images": ["", "images/b.png"], "neg_scores": [0.2, 0.1],
    })
    assert set(record) == {"query_text", "query_image", "pos_text", "pos_image", "query_pos_scores",
                           "hard_negatives", "hard_negatives_scores"}
    assert record["query_text"] == "<|image_1|>\nRepresent the given image with the following question: what?\n"
    assert record["hard_negatives"] == [["red\n", ""], ["<|image_1|>\nblue\n", "images/b.png"]]


def test_config_yaml_and_dotted_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("retrieval:\n  top_k: 7\njudge:\n  backend: vllm\n")
    config = load_config(MineConfig, tmp_path / "c.yaml", ["judge.backend=transformers", "select.beta=0.05",
                                                           "judge.engine_kwargs={block_size: 16}"])
    assert config.retrieval.top_k == 7 and config.judge.backend == "transformers"
    assert config.select.beta == 0.05 and config.judge.engine_kwargs == {"block_size": 16}
    with pytest.raises(ValueError, match="top_kk"):
        load_config(MineConfig, None, ["retrieval.top_kk=3"])
    with pytest.raises(ValueError, match="backend"):
        load_config(MineConfig, None, ["judge.backend=openai"])
    with pytest.raises(ValueError, match="corpus.path is required"):
        load_config(MineConfig, None, ["corpus.source=parquet"])


def test_malformed_json_records_are_rejected_and_the_rest_read(tmp_path):
    records = [
        {"query_text": "what?", "pos_text": "yes", "query_image": "", "pos_image": ""},
        {"query_text": "no positive"},
        "not an object",
        {"query_text": "q", "pos_text": "p", "hard_negatives": [["only one"]]},
        {"query_text": 3, "pos_text": "p"},
    ]
    (tmp_path / "r.json").write_text(json.dumps(records))
    corpus = read_unime_json(tmp_path / "r.json")
    assert corpus.queries.column("id").to_pylist() == ["q0"]
    reasons = {r["id"]: r["reason"] for r in corpus.rejects}
    assert reasons == {"q1": "record lacks ['pos_text']", "q2": "record is a str, not an object",
                       "q3": "hard_negatives is not a list of [text, image] pairs",
                       "q4": "query_text is not a string"}
