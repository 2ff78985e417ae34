"""The reranker's training sequences, labels and loss, on the tiny real checkpoint."""

import copy
from collections import Counter

import pytest
import torch
from conftest import assert_same_gradients, lora_gradients, png_bytes

from unime_ray.models.loading import load_model, load_processor
from unime_ray.training.config import TrainRerankerConfig
from unime_ray.training.lora import apply_lora
from unime_ray.training.reranker_data import (IGNORE, answer_labels, build_reranker_batch, encode_sequences,
                                              hardest_negative)
from unime_ray.training.reranker_step import answer_token_loss, reranker_step

LIST = 6


def _record(i: int, image_dir=None) -> dict:
    """Query i with an image (when ``image_dir``), a text positive and 5 text negatives."""
    negatives = [f"negative {i}.{j}" for j in range(LIST - 1)]
    image = ""
    if image_dir is not None:
        image = f"q{i}.png"
        (image_dir / image).write_bytes(png_bytes((10 * i % 255, 80, 160), (40, 40)))
    return {"query_id": f"q{i}", "query_instruction": "Find a caption for the given image.",
            "query_text": f"query text {i}", "query_image": image, "positive_id": f"p{i}", "pos_instruction": "",
            "pos_text": f"positive {i}", "pos_image": "", "query_pos_score": 0.9,
            "neg_ids": [f"n{i}.{j}" for j in range(LIST - 1)], "neg_instructions": [""] * (LIST - 1),
            "neg_texts": negatives, "neg_images": [""] * (LIST - 1), "neg_scores": [0.2, 0.7, 0.4, 0.7, 0.1]}


def test_answer_labels_keep_exactly_the_last_tokens_under_either_padding():
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = answer_labels(ids, mask, [2, 1, 3])
    x = IGNORE
    assert labels.tolist() == [[x, x, 7, 8, x, x], [x, x, x, x, x, 8], [x, x, x, 4, 5, 6]]


def test_hardest_negative_is_the_highest_judge_score_first_on_ties():
    assert hardest_negative([0.2, 0.7, 0.4, 0.7, 0.1]) == 1
    assert hardest_negative([1.0, 1.0]) == 0  # fallback records: all 1.0


def test_the_pairwise_negative_is_the_hardest_of_all_kept_negatives():
    record = _record(0)
    for column, extra in (("neg_ids", ["n0.5", "n0.6"]), ("neg_instructions", ["", ""]),
                          ("neg_texts", ["negative 0.5", "negative 0.6"]), ("neg_images", ["", ""]),
                          ("neg_scores", [0.3, 0.9])):
        record[column] = record[column] + extra  # 7 negatives; the hardest (0.9) is the last
    batch = build_reranker_batch([record], None, LIST, seed=0, step=1)
    assert "negative 0.6" in str(batch.pairs[1].messages)  # beyond the listwise sequence's 5
    assert "negative 0.6" not in str(batch.lists[0].messages) and "negative 0.4" in str(batch.lists[0].messages)


def test_sequences_keep_texts_and_images_and_label_only_the_answers(checkpoints, tmp_path):
    processor = load_processor(checkpoints["reranker"])
    records = [_record(i, tmp_path) for i in range(3)]
    batch = build_reranker_batch(records, str(tmp_path), LIST, seed=0, step=1)
    assert (batch.size, len(batch.pairs), batch.skipped) == (3, 6, [])
    assert [s.answer for s in batch.pairs] == ["Yes", "No"] * 3
    for i, (yes, no, listwise) in enumerate(zip(batch.pairs[0::2], batch.pairs[1::2], batch.lists)):
        yes_text, no_text, list_text = (str(s.messages) for s in (yes, no, listwise))
        for text in (yes_text, no_text, list_text):
            assert f"query text {i}" in text and "Find a caption for the given image." in text
        assert f"positive {i}" in yes_text and f"negative {i}.1" in no_text  # 0.7 first: the hardest
        position = int(listwise.answer[len("Ans: ("):-1]) - 1
        prompt = "".join(part.get("text", "") for part in listwise.messages[0]["content"])
        assert prompt.count("\nCandidate (") == LIST
        assert f"\nCandidate ({position + 1}): positive {i}\n" in prompt + "\n"
        assert all(f"negative {i}.{j}" in list_text for j in range(LIST - 1))
        assert [len(s.images) for s in (yes, no, listwise)] == [1, 1, 1]  # the query's image
    for sequences in (batch.pairs, batch.lists):
        inputs, labels = encode_sequences(processor, sequences)
        assert inputs["image_grid_thw"].shape[0] == len(sequences)  # every image reached the model
        for row, sequence in enumerate(sequences):
            kept = labels[row][labels[row] != IGNORE]
            assert processor.tokenizer.decode(kept) == sequence.answer + "<|im_end|>"
            # The labelled tokens are exactly the row's last real tokens: nothing of the prompt.
            real = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
            assert torch.equal(real[-len(kept):], kept)
            assert int((labels[row] != IGNORE).sum()) == len(kept)


def test_listwise_positions_are_uniform_over_a_seeded_run():
    records = [_record(i) for i in range(500)]
    positions = Counter()
    for step in range(1, 13):  # 6,000 draws: 1,000 expected per position, sd about 29
        for sequence in build_reranker_batch(records, None, LIST, seed=3, step=step).lists:
            positions[sequence.answer] += 1
    assert sorted(positions) == [f"Ans: ({i})" for i in range(1, LIST + 1)]
    assert all(880 < count < 1120 for count in positions.values()), positions
    again = [s.answer for s in build_reranker_batch(records[:50], None, LIST, seed=3, step=1).lists]
    assert again == [s.answer for s in build_reranker_batch(records[:50], None, LIST, seed=3, step=1).lists]
    assert again != [s.answer for s in build_reranker_batch(records[:50], None, LIST, seed=3, step=2).lists]


def test_bad_records_are_skipped_with_their_reason(tmp_path):
    records = [_record(i) for i in range(3)]
    records[0]["query_image"] = "missing.png"
    for column in ("neg_ids", "neg_texts", "neg_instructions", "neg_images", "neg_scores"):
        records[1][column] = records[1][column][:2]
    batch = build_reranker_batch(records, str(tmp_path), LIST, seed=0, step=1)
    reasons = dict(batch.skipped)
    assert batch.size == 1 and len(batch.pairs) == 2
    assert "not found" in reasons["q0"] and reasons["q1"] == "2 negatives, training asks for 5"


@pytest.fixture(scope="module")
def lora_reranker(checkpoints):
    processor = load_processor(checkpoints["reranker"])
    torch.manual_seed(0)
    model = apply_lora(load_model(checkpoints["reranker"]), TrainRerankerConfig().lora.model_copy(update={"dropout": 0.0}))
    with torch.no_grad():  # non-zero B matrices, so every adapter gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return processor, model


def test_lora_trains_the_language_model_only(lora_reranker):
    _, model = lora_reranker
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "visual" in n)


def test_answer_token_loss_is_the_models_own_label_loss(lora_reranker, tmp_path):
    processor, model = lora_reranker
    batch = build_reranker_batch([_record(i, tmp_path) for i in range(2)], str(tmp_path), LIST, seed=0, step=1)
    inputs, labels = encode_sequences(processor, batch.lists + batch.pairs[:1])
    with torch.no_grad():
        ours = answer_token_loss(model, inputs, labels) / (labels[:, 1:] != IGNORE).sum()
        reference = model(**inputs, labels=labels).loss  # transformers' shifted CE over all logits
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def test_micro_batches_give_the_one_pass_loss_and_gradients(lora_reranker, tmp_path):
    processor, base = lora_reranker
    batch = build_reranker_batch([_record(i, tmp_path) for i in range(3)], str(tmp_path), LIST, seed=0, step=1)
    results = []
    for micro in (None, 2):
        model = copy.deepcopy(base).train()
        losses = reranker_step(model, processor, batch, list_weight=0.5, micro_batch_size=micro)
        results.append((losses, lora_gradients(model)))
    (one, one_grads), (micro, micro_grads) = results
    assert micro["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert one["loss"] == pytest.approx(one["loss_pair"] + 0.5 * one["loss_list"], rel=1e-6)
    assert any(g.abs().sum() > 0 for g in one_grads.values())
    assert_same_gradients(one_grads, micro_grads)
