"""The judge's score formula and prompt, without an engine."""

import math

import numpy as np
import pytest
from PIL import Image

from unime_ray.models.engines.scoring import JUDGE_PROMPT, JudgeResult, judge_messages, score_isolating_failures, yes_probability
from unime_ray.models.inputs import Item, join_text


def test_yes_probability_hand_values():
    # e^log3 / (e^log3 + e^0) = 3 / 4
    assert yes_probability(math.log(3), 0.0) == pytest.approx(0.75)
    assert yes_probability(0.0, 0.0) == pytest.approx(0.5)
    # log-probabilities give the same answer as logits: the normaliser cancels
    assert yes_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)


def test_yes_probability_is_stable_for_large_logits():
    out = yes_probability(np.array([1000.0, -1000.0]), np.array([0.0, 0.0]))
    assert out.tolist() == [1.0, 0.0]


def test_judge_messages_carry_prompt_texts_and_images_in_order():
    image = Image.new("RGB", (8, 8))
    messages = judge_messages(Item("Represent:", "what shape?", image), Item("", "circle", None))
    content = messages[0]["content"]
    assert content[0]["text"].startswith(JUDGE_PROMPT)
    kinds = [c["type"] for c in content]
    assert kinds == ["text", "image", "text", "text", "text"]
    assert content[2]["text"] == "Represent: what shape?"
    assert content[-1]["text"] == "circle"


def test_join_text():
    assert join_text("Find:", " a cat ") == "Find: a cat"
    assert join_text(None, "x") == "x" and join_text("", "") == ""


def test_failures_are_isolated_to_the_failing_pair():
    def score(pairs):
        if any(p == "bad" for p in pairs):
            raise ValueError("prompt too long")
        return [0.5] * len(pairs)

    results = score_isolating_failures(score, ["a", "bad", "c"])
    assert results[0] == JudgeResult(0.5) and results[2] == JudgeResult(0.5)
    assert results[1].score is None and "prompt too long" in results[1].error
