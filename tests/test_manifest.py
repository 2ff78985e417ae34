"""Stage bookkeeping: what a rerun skips and what makes it run again."""

import json
import os
import time

import pytest

from unime_ray.mining.manifest import Manifest, fingerprint, path_signature, reuse_stages


def test_done_stages_are_skipped_and_changed_ones_rerun(tmp_path):
    calls = []

    def build(out):
        calls.append(out.name)
        (out / "x.txt").write_text("result")
        return {"n": len(calls)}

    assert Manifest(tmp_path).run("stage", "fp1", build) == {"n": 1}
    assert Manifest(tmp_path).run("stage", "fp1", build) == {"n": 1}  # a new process: skipped
    assert Manifest(tmp_path).run("stage", "fp2", build) == {"n": 2}  # config changed: rerun
    assert calls == ["stage.partial", "stage.partial"]
    assert (tmp_path / "stages" / "stage" / "x.txt").read_text() == "result"
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["stage"]["fingerprint"] == "fp2"


def test_a_stage_that_died_midway_is_not_recorded(tmp_path):
    def crash(out):
        (out / "half.txt").write_text("half")
        raise RuntimeError("killed")

    try:
        Manifest(tmp_path).run("stage", "fp", crash)
    except RuntimeError:
        pass
    assert not Manifest(tmp_path).is_done("stage", "fp")
    assert Manifest(tmp_path).run("stage", "fp", lambda out: {"ok": True}) == {"ok": True}


def test_path_signature_follows_file_content_not_just_the_name(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"v1")
    before = fingerprint(str(model), path_signature(str(model)))
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"v2 re-exported")  # same path, new weights
    assert fingerprint(str(model), path_signature(str(model))) != before
    assert path_signature("Qwen/Qwen2-VL-2B-Instruct") == ["Qwen/Qwen2-VL-2B-Instruct"]  # hub ids as given
    assert path_signature(None) == [None]
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert path_signature(str(model)) == path_signature(str(model))  # stable when nothing changes


def test_a_resumable_stage_keeps_its_partial_rows_only_for_the_same_fingerprint(tmp_path):
    def crash(out):
        (out / "rows-1.txt").write_text("done before the kill")
        raise RuntimeError("killed")

    def finish(out):
        (out / "rows-2.txt").write_text("done now")
        return {"files": sorted(p.name for p in out.glob("*.txt"))}

    try:
        Manifest(tmp_path).run("judge", "fp", crash, resumable=True)
    except RuntimeError:
        pass
    assert Manifest(tmp_path).run("judge", "fp", finish, resumable=True) == {"files": ["rows-1.txt", "rows-2.txt"]}
    try:
        Manifest(tmp_path).run("judge", "fp2", crash, resumable=True)
    except RuntimeError:
        pass
    # Another config's partial rows are not this one's: start over.
    assert Manifest(tmp_path).run("judge", "fp3", finish, resumable=True) == {"files": ["rows-2.txt"]}
    # A stage that does not checkpoint rows never reuses a partial directory.
    try:
        Manifest(tmp_path).run("select", "fp", crash)
    except RuntimeError:
        pass
    assert Manifest(tmp_path).run("select", "fp", finish) == {"files": ["rows-2.txt"]}


def test_a_new_output_directory_reuses_finished_stages_and_runs_the_rest(tmp_path):
    source, dest = tmp_path / "first", tmp_path / "second"
    calls = []

    def build(out):
        calls.append(out.parent.parent.name)
        (out / "x.txt").write_text(out.parent.parent.name)

    for name in ("a", "b"):
        Manifest(source).run(name, f"fp-{name}", build)
    reuse_stages(source, dest, ["a"])
    reuse_stages(source, dest, ["a"])  # again, as a rerun after a stop would: nothing changes
    Manifest(dest).run("a", "fp-a", build)  # reused: skipped
    Manifest(dest).run("b", "fp-b", build)  # not reused: runs in dest
    assert calls == ["first", "first", "second"]
    assert (dest / "stages" / "a" / "x.txt").read_text() == "first"
    assert (dest / "stages" / "b" / "x.txt").read_text() == "second"
    with pytest.raises(ValueError, match="no finished stage \\['c'\\]"):
        reuse_stages(source, tmp_path / "third", ["c"])
    with pytest.raises(FileExistsError, match="new output directory"):
        reuse_stages(source, dest, ["b"])  # dest ran b itself
    Manifest(dest).run("a", "fp-a2", build)  # a's settings changed: rebuilt in dest, the source's left alone
    assert (dest / "stages" / "a" / "x.txt").read_text() == "second" and not (dest / "stages" / "a").is_symlink()
    assert (source / "stages" / "a" / "x.txt").read_text() == "first"


def test_a_reading_option_enters_a_stage_fingerprint_once_it_is_set():
    """None (the checkpoint's own format, pooling, attention) is left out, so stages recorded
    before an option existed still match; set, it reruns the stage that reads with it."""
    from unime_ray.mining.config import MineConfig
    from unime_ray.mining.pipeline import stage_settings

    default = MineConfig()
    assert not {"format", "pooling", "bidirectional"} & set(stage_settings(default.embed))
    assert stage_settings(default.judge, {"model", "format"}) == {"model": default.judge.model}
    changed = MineConfig.model_validate({"embed": {"pooling": "mean"}, "judge": {"format": "unime-v2"}})
    assert stage_settings(changed.embed)["pooling"] == "mean"
    assert stage_settings(changed.judge, {"model", "format"}) == {"model": default.judge.model, "format": "unime-v2"}
