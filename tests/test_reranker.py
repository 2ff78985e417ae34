"""Reranker inference: answer parsing, orderings, and the fallback on a real (untrained)
tiny checkpoint, whose answers are noise."""

import pytest
from conftest import png_bytes

from unime_ray.models.inputs import Item
from unime_ray.models.reranker import (Reranker, listwise_answer, order_by_scores, parse_listwise_answer,
                                       promote)


@pytest.mark.parametrize("text,expected", [
    ("Ans: (3)", 2),
    ("Ans: (1)", 0),
    ("Ans: ( 6 )", 5),
    ("(2)", 1),
    ("Ans: (2) or maybe (4)", 1),  # the first number counts
    ("Ans: (7)", None),  # out of range for 6 candidates
    ("Ans: (0)", None),
    ("Ans: (-1)", None),
    ("Ans: 3", None),  # no "(i)"
    ("Ans: (three)", None),
    ("", None),
    (None, None),
    ("z\ufffd (s|row", None),
])
def test_parse_listwise_answer(text, expected):
    assert parse_listwise_answer(text, 6) == expected


def test_parsing_inverts_the_training_target():
    assert all(parse_listwise_answer(listwise_answer(i), 10) == i for i in range(10))


def test_orderings():
    assert promote(2, 5) == [2, 0, 1, 3, 4]
    assert promote(0, 3) == [0, 1, 2]
    assert order_by_scores([0.1, 0.9, None, 0.9, 0.5]) == [1, 3, 4, 0, 2]  # ties keep order, unscored last


@pytest.fixture(scope="module")
def untrained(checkpoints):
    return {mode: Reranker.from_pretrained(checkpoints["reranker"], backend="transformers", mode=mode, top_n=3)
            for mode in ("listwise", "pointwise")}


def _request(n=5):
    from PIL import Image

    query = Item("Find a caption for the given image.", "", Image.new("RGB", (40, 40), (200, 30, 30)))
    return query, [Item("", f"candidate {i}") for i in range(n)]


def test_malformed_listwise_answers_keep_the_embedders_order_and_are_counted(untrained):
    reranker = untrained["listwise"]
    before = reranker.fallbacks
    rankings = reranker.rerank_batch([_request(5), _request(2)])
    # A random model does not answer "Ans: (i)"; whatever it says, the result is a valid order.
    for ranking, n in zip(rankings, (5, 2)):
        assert sorted(ranking.order) == list(range(n)) and ranking.order[3:] == list(range(3, n))
        if ranking.fallback:
            assert ranking.order == list(range(n))
    assert reranker.fallbacks - before == sum(r.fallback for r in rankings) > 0


def test_a_request_the_engine_rejects_fails_alone(untrained):
    from PIL import Image
    import io

    thin = Item("", "", Image.open(io.BytesIO(png_bytes(size=(2, 600)))))  # Qwen2-VL refuses this aspect ratio
    good, bad = _request(3), (thin, _request(3)[1])
    listwise = untrained["listwise"].rerank_batch([good, bad])
    assert listwise[1].fallback and "aspect ratio" in listwise[1].error and listwise[1].order == [0, 1, 2]
    assert listwise[0].error is None
    pointwise = untrained["pointwise"].rerank_batch([good, bad])
    assert pointwise[1].scores == [None] * 3 and "aspect ratio" in pointwise[1].error
    assert pointwise[0].error is None and all(0 < s < 1 for s in pointwise[0].scores)
    assert pointwise[0].order == order_by_scores(pointwise[0].scores)
