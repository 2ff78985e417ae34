"""Model merging: the arithmetic on hand-checked tensors, then ``python -m
unime_ray.training.merge`` on tiny checkpoints (exports and a peft adapter), and self
positioning learning its weights on a probe set."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import perturb, text_records

from unime_ray.models.embedder import Embedder
from unime_ray.models.formats import read_record, record_format, resolve_input_format
from unime_ray.models.inputs import Item
from unime_ray.models.loading import load_model, load_processor
from unime_ray.training.merge import MergeConfig, combine, main, task_vectors


def test_task_vectors_and_their_combinations_by_hand():
    base = {"w": torch.tensor([0.0, 0.0]), "steps": torch.tensor([3])}
    models = [{"w": torch.tensor([1.0, 0.0]), "steps": torch.tensor([3])},
              {"w": torch.tensor([0.0, 2.0]), "steps": torch.tensor([3])}]
    vectors = task_vectors(base, models)
    assert [v["w"].tolist() for v in vectors] == [[1.0, 0.0], [0.0, 2.0]] and "steps" not in vectors[0]
    assert combine(base, vectors, [0.5, 0.5])["w"].tolist() == [0.5, 1.0]  # linear: the models' mean
    assert combine(base, vectors, [1.0, 1.0])["w"].tolist() == [1.0, 2.0]  # task arithmetic: both tasks added
    assert combine(base, vectors, [1.0, 1.0])["steps"].tolist() == [3]
    with pytest.raises(ValueError, match="non-float tensor steps"):
        task_vectors(base, [{"w": torch.zeros(2), "steps": torch.tensor([4])}])
    with pytest.raises(ValueError, match="architecture"):
        task_vectors(base, [{"w": torch.zeros(2)}])


def test_merge_configs_are_checked():
    assert MergeConfig(base="b", models=["x", "y", "z"]).weights == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="sum to 1"):
        MergeConfig(base="b", models=["x", "y"], weights=[0.7, 0.7])
    assert MergeConfig(base="b", models=["x", "y"], weights=[0.7, 0.7], method="task_arithmetic").weights == [0.7, 0.7]
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        MergeConfig(base="b", models=["x", "y", "z"], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="task_arithmetic"):
        MergeConfig(base="b", models=["x", "y"], self_positioning={"probe": "p.parquet"})


def _trained_copy(base: str, out, seed: int):
    """An export of ``base`` with every weight moved (stands for a fine-tuned model)."""
    model = load_model(base)
    perturb(model, seed, 0.02)
    model.save_pretrained(out)
    load_processor(base).save_pretrained(out)
    record_format(out, resolve_input_format(base))
    return model


def _adapter(base: str, out, seed: int):
    """A peft LoRA adapter of ``base`` with its adapter weights moved; returns it merged."""
    from unime_ray.training.lora import LoraSettings, apply_lora

    model = apply_lora(load_model(base), LoraSettings(dora=False))
    perturb(model, seed, 0.05)
    model.save_pretrained(out)
    return model.merge_and_unload()


def test_the_merge_command_writes_an_ordinary_model_directory(checkpoints, tmp_path):
    base = checkpoints["embedder"]
    first = _trained_copy(base, tmp_path / "a", seed=1)
    second = _adapter(base, tmp_path / "b", seed=2)
    out = main(["--output-dir", str(tmp_path / "merged"), f"base={base}",
                f"models=[{tmp_path / 'a'}, {tmp_path / 'b'}]", "method=task_arithmetic", "weights=[0.6, 0.8]"])
    merged, original = load_model(str(out)).state_dict(), load_model(base).state_dict()
    moved = 0
    for name, tensor in merged.items():
        if tensor.is_floating_point():
            expected = original[name] + 0.6 * (first.state_dict()[name] - original[name]) + 0.8 * (
                second.state_dict()[name] - original[name])
            assert torch.allclose(tensor, expected, atol=1e-6), name
            moved += not torch.equal(tensor, original[name])
    assert moved > 0  # not the base passed through
    assert read_record(out) == read_record(base)  # read with the models' input format
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.6, 0.8]
    vectors = Embedder.from_pretrained(str(out)).embed([Item("", "a red circle")])
    assert np.isfinite(vectors).all()


def test_models_with_different_input_formats_do_not_merge(checkpoints, tmp_path):
    base = checkpoints["embedder"]
    _trained_copy(base, tmp_path / "a", seed=1)
    _trained_copy(base, tmp_path / "b", seed=2)
    record_format(tmp_path / "b", resolve_input_format(base, pooling="mean"))
    with pytest.raises(ValueError, match="read their inputs differently"):
        main(["--output-dir", str(tmp_path / "merged"), f"base={base}", f"models=[{tmp_path / 'a'}, {tmp_path / 'b'}]"])


def test_self_positioning_learns_weights_that_lower_the_probe_loss(checkpoints, tmp_path):
    from unime_ray.training.losses import info_nce_loss
    from unime_ray.training.records import positive_item, query_item

    base = checkpoints["embedder"]
    _trained_copy(base, tmp_path / "a", seed=1)
    _trained_copy(base, tmp_path / "b", seed=2)
    records = text_records()
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "probe.parquet")
    start = [0.5, 0.5]
    common = ["--output-dir", None, f"base={base}", f"models=[{tmp_path / 'a'}, {tmp_path / 'b'}]",
              "method=task_arithmetic", f"weights={start}"]
    plain = main([*common[:1], str(tmp_path / "plain"), *common[2:]])
    learnt = main([*common[:1], str(tmp_path / "learnt"), *common[2:],
                   f"self_positioning={{probe: {tmp_path / 'probe.parquet'}, steps: 6, batch_size: 4, lr: 0.2}}"])
    weights = json.loads((learnt / "merge.json").read_text())["weights"]
    assert weights != start

    def probe_loss(model_dir) -> float:
        embedder = Embedder.from_pretrained(str(model_dir))
        with torch.no_grad():
            queries = embedder.encode([query_item(r, None) for r in records])
            positives = embedder.encode([positive_item(r, None) for r in records])
        return info_nce_loss(queries, positives, 0.02).item()

    assert probe_loss(learnt) < probe_loss(plain)
