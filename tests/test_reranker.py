"""Reranker inference: answer parsing, orderings, constrained listwise scoring, and the
fallback on a real (untrained) tiny checkpoint, whose generated answers are noise."""

import numpy as np
import pytest
import torch
from conftest import png_bytes

from unime_ray.models.inputs import Item, encode, render
from unime_ray.models.formats import unime_ray_list as listwise_messages
from unime_ray.models.reranker import (ANSWER_PREFIX, Reranker, label_distribution, label_logprobs, listwise_answer,
                                       listwise_images, order_by_scores, parse_listwise_answer, promote)


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


def test_label_distribution_renormalises_over_the_labels():
    assert label_distribution(np.log([0.1, 0.3])).tolist() == pytest.approx([0.25, 0.75])
    assert label_distribution([-1000.0, -1000.0, -1001.0]).sum() == pytest.approx(1.0)  # no underflow


@pytest.fixture(scope="module")
def untrained(checkpoints):
    from unime_ray.models.engines.scoring import build_judge

    engine = build_judge("transformers", model=checkpoints["reranker"])
    return {"listwise": Reranker(engine, "listwise", top_n=3), "pointwise": Reranker(engine, "pointwise", top_n=3),
            "generate": Reranker(engine, "listwise", top_n=3, listwise="generate")}


def _request(n=5, seed=0):
    from PIL import Image

    query = Item("Find a caption for the given image.", "", Image.new("RGB", (40, 40), (200, 30 * seed, 30)))
    return query, [Item("", f"candidate {i + seed}") for i in range(n)]


def test_constrained_listwise_is_the_label_tokens_distribution_after_the_answers_opening(untrained):
    reranker = untrained["listwise"]
    requests = [_request(5, seed) for seed in range(4)] + [_request(2)]
    rankings = reranker.rerank_batch(requests)
    engine, processor = reranker.engine, reranker.engine.processor
    picks = []
    for (query, candidates), ranking in zip(requests, rankings):
        head = candidates[:3]
        prompt = render(processor, listwise_messages(query, head))
        batch = encode(processor, [prompt + ANSWER_PREFIX], [listwise_images(query, head)])
        # The training answer "Ans: (i)" tokenizes as the opening, then the label alone:
        # the position scored here is the one the reranker was trained to answer at.
        full = encode(processor, [prompt + listwise_answer(2)], [listwise_images(query, head)])["input_ids"][0].tolist()
        assert full[: batch["input_ids"].shape[1]] == batch["input_ids"][0].tolist()
        assert full[batch["input_ids"].shape[1]] == reranker.digit_ids[2]
        with torch.no_grad():
            logits = engine.model(**batch).logits[0, -1].double()
        expected = torch.softmax(logits[reranker.digit_ids[: len(head)]], dim=0).numpy()
        assert ranking.scores == pytest.approx(expected.tolist(), abs=1e-6)
        assert ranking.order[: len(head)] == order_by_scores(ranking.scores) and not ranking.fallback
        assert ranking.order[len(head):] == list(range(len(head), len(candidates)))  # beyond top_n: unchanged
        assert ranking.answer == listwise_answer(ranking.order[0])
        picks.append(ranking.order[0])
    assert len(rankings[-1].scores) == 2 and sum(rankings[-1].scores) == pytest.approx(1.0)
    assert any(pick != 0 for pick in picks)  # the untrained model does move candidates up


def test_two_digit_labels_by_hand():
    first, second = [-1.0, -2.0, *[-9.0] * 7], [-0.5, -3.0, -4.0, *[-9.0] * 8]
    # label 1 = "1" then ")", labels 2..9 one digit, label 10 = "1" then "0", 11 = "1" then "1"
    assert label_logprobs(first, second, 11) == [-1.5, -2.0, *[-9.0] * 7, -4.0, -5.0]
    assert label_logprobs(first, None, 3) == [-1.0, -2.0, -9.0]
    with pytest.raises(ValueError, match="second digit"):
        label_logprobs(first, None, 10)


def test_constrained_listwise_reads_ten_or_more_candidates_digit_by_digit(untrained):
    reranker = Reranker(untrained["listwise"].engine, "listwise", top_n=12)
    query, candidates = _request(12)
    [ranking] = reranker.rerank_batch([(query, candidates)])
    engine, processor = reranker.engine, reranker.engine.processor
    prompt = render(processor, listwise_messages(query, candidates))

    def next_logprobs(prefix):
        batch = encode(processor, [prompt + prefix], [listwise_images(query, candidates)])
        with torch.no_grad():
            return torch.log_softmax(engine.model(**batch).logits[0, -1].double(), dim=0)

    first, second = next_logprobs(ANSWER_PREFIX), next_logprobs(ANSWER_PREFIX + "1")
    digit = dict(zip("123456789", reranker.digit_ids))
    close, zero = reranker.second_ids[0], reranker.second_ids[1]
    expected = [first[digit["1"]] + second[close], *(first[digit[str(d)]] for d in range(2, 10)),
                first[digit["1"]] + second[zero], first[digit["1"]] + second[digit["1"]],
                first[digit["1"]] + second[digit["2"]]]
    assert ranking.scores == pytest.approx(torch.softmax(torch.stack(expected), 0).tolist(), abs=1e-6)
    assert max(ranking.scores) < 0.9  # not trivially one label
    with pytest.raises(ValueError, match="2 to 19"):
        Reranker(untrained["listwise"].engine, "listwise", top_n=20)


def test_malformed_listwise_answers_keep_the_embedders_order_and_are_counted(untrained):
    reranker = untrained["generate"]
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
    for mode in ("listwise", "generate"):
        listwise = untrained[mode].rerank_batch([good, bad])
        assert listwise[1].fallback and "aspect ratio" in listwise[1].error and listwise[1].order == [0, 1, 2]
        assert listwise[0].error is None
    pointwise = untrained["pointwise"].rerank_batch([good, bad])
    assert pointwise[1].scores == [None] * 3 and "aspect ratio" in pointwise[1].error
    assert pointwise[0].error is None and all(0 < s < 1 for s in pointwise[0].scores)
    assert pointwise[0].order == order_by_scores(pointwise[0].scores)
