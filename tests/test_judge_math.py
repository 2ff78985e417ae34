"""The judge's score formula and prompt, without an engine."""

import math

import numpy as np
import pytest
from PIL import Image

from unime_ray.failures import call_isolating_failures
from unime_ray.models.engines.scoring import yes_probability
from unime_ray.models.formats import JUDGE_PROMPT, unime_ray_pair
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
    messages = unime_ray_pair(Item("Represent:", "what shape?", image), Item("", "circle", None))
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

    results = call_isolating_failures(score, ["a", "bad", "c"])
    assert results[0] == (0.5, None) and results[2] == (0.5, None)
    assert results[1][0] is None and "prompt too long" in results[1][1]


def test_isolation_splits_batches_and_never_swallows_infrastructure_errors():
    from unime_ray.failures import is_infrastructure_error

    calls = []

    def score(items):
        calls.append(len(items))
        if "bad" in items:
            raise ValueError("prompt too long")
        return [1.0] * len(items)

    outcomes = call_isolating_failures(score, ["ok"] * 15 + ["bad"])
    assert [e is None for _, e in outcomes] == [True] * 15 + [False]
    assert len(calls) <= 2 * 4 + 1 < 16  # halving: about 2 log2(16) calls, not one per item

    class EngineDeadError(Exception):  # vLLM's name; matched by name so vLLM need not be imported
        pass

    class OutOfMemoryError(RuntimeError):  # torch.cuda's
        pass

    for error in (EngineDeadError("engine core died"), OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                  RuntimeError("CUDA error: an illegal memory access was encountered")):
        assert is_infrastructure_error(error)

        def dead(items, error=error):
            raise error

        with pytest.raises(type(error)):
            call_isolating_failures(dead, ["a", "b"])
    assert not is_infrastructure_error(ValueError("absolute aspect ratio must be smaller than 200"))
