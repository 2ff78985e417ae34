"""NV-Embed's options: latent-attention pooling (a trained layer that travels with the model)
and bidirectional attention in the embedder, on hand-checked tensors and tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb

from unime_ray.models.embedder import Embedder
from unime_ray.models.formats import read_record, record_format, resolve_input_format
from unime_ray.models.inputs import Item
from unime_ray.models.loading import backbone, load_model, load_processor
from unime_ray.models.pooling import (LATENT_FILE, LATENT_POOL, LatentAttentionPooling, attach_latent_pool,
                                      load_latent_pool, make_bidirectional, save_latent_pool)

ITEMS = [Item("Find a caption for the given image.", "a red circle"), Item("", "a blue triangle on grey")]


def test_latent_attention_by_hand():
    """One latent and identity projections: every token attends to the latent alone, so it
    adds the latent; with the MLP's output zeroed, the vector is the mean of x + latent over
    the real tokens."""
    layer = LatentAttentionPooling(hidden=2, latents=1, heads=1)
    with torch.no_grad():
        layer.latents.copy_(torch.tensor([[0.5, -1.0]]))
        layer.attention.in_proj_weight.copy_(torch.cat([torch.eye(2)] * 3))
        layer.attention.in_proj_bias.zero_()
        layer.attention.out_proj.weight.copy_(torch.eye(2))
        layer.attention.out_proj.bias.zero_()
        layer.mlp[2].weight.zero_()
        layer.mlp[2].bias.zero_()
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = layer(hidden, torch.tensor([[1, 1, 0]]))  # the third token is padding
    assert torch.allclose(pooled, torch.tensor([[2.5, 2.0]]))  # mean of [1.5, 1] and [3.5, 3]
    layer.mlp[2].bias.data.fill_(1.0)  # the MLP's residual branch adds its output
    assert torch.allclose(layer(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[3.5, 3.0]]))


def test_the_latent_layer_round_trips_bit_exactly(checkpoints, tmp_path):
    model = load_model(checkpoints["embedder"])
    layer = attach_latent_pool(model, latents=16, heads=2)
    perturb(layer, 0, 0.05)
    trained = {name: value.clone() for name, value in layer.state_dict().items()}
    save_latent_pool(model, tmp_path)
    assert not hasattr(model, LATENT_POOL)  # the model's own weights stay the architecture's
    restored = load_latent_pool(load_model(checkpoints["embedder"]), tmp_path, latents=16, heads=2)
    assert restored.state_dict().keys() == trained.keys()
    assert all(torch.equal(restored.state_dict()[name], value) for name, value in trained.items())
    with pytest.raises(FileNotFoundError, match=LATENT_FILE):
        load_latent_pool(load_model(checkpoints["embedder"]), tmp_path / "elsewhere", 16, 2)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_a_latent_attention_embedder_exports_and_loads_as_trained(checkpoints, tmp_path, finetune):
    """The trainer's embedder (adapters or every weight, and a latent-attention layer trained
    whole) -> a checkpoint -> an exported model directory -> ``Embedder.from_pretrained``:
    the same layer bit for bit, and the same embeddings (the LoRA merge rounds)."""
    from unime_ray.training.checkpointing import export_checkpoint, save_state, warmup_linear
    from unime_ray.training.config import TrainEmbedderConfig
    from unime_ray.training.embedder_loop import load_trainable_embedder

    cfg = TrainEmbedderConfig(model=checkpoints["embedder"], pooling="latent_attention", finetune=finetune)
    trainable = load_trainable_embedder(cfg)
    assert trainable.format.pooling == "latent_attention"
    # Trained whole, beside the adapters (peft keeps a frozen original beside the trained copy).
    layer = [p for name, p in trainable.latent_pool.named_parameters() if "original_module" not in name]
    assert layer and all(p.requires_grad for p in layer)
    perturb(trainable.model, 1, 0.05)  # the adapters (or every weight) and the layer
    trainable.model.eval()
    expected = trainable.embed(ITEMS)
    optimizer = torch.optim.AdamW([p for p in trainable.model.parameters() if p.requires_grad], lr=1e-3)
    (tmp_path / "checkpoint").mkdir()
    save_state(tmp_path / "checkpoint", trainable.model, optimizer, warmup_linear(optimizer, 1, 10), step=3)
    exported = export_checkpoint(cfg.model, tmp_path / "checkpoint", tmp_path / "model", input_format=trainable.format)
    record_format(exported, trainable.format)
    assert (exported / LATENT_FILE).is_file() and read_record(exported)["embedding"]["pooling"] == "latent_attention"

    loaded = Embedder.from_pretrained(str(exported))  # mining, evaluation and serving load it so
    assert loaded.format == trainable.format
    trained_layer = {k.replace("modules_to_save.default.", ""): v for k, v in trainable.latent_pool.state_dict().items()
                     if "original_module" not in k}
    assert all(torch.equal(loaded.latent_pool.state_dict()[name], value) for name, value in trained_layer.items())
    assert np.allclose(loaded.embed(ITEMS), expected, atol=1e-5)
    # Not trivially equal: a new layer on the same weights embeds differently.
    untrained = load_model(str(exported))
    attach_latent_pool(untrained, loaded.format.latents, loaded.format.latent_heads)
    assert not np.allclose(Embedder(loaded.processor, untrained, "cpu", loaded.format).embed(ITEMS), expected, atol=1e-3)


def _first_token_state(model, processor, text: str) -> torch.Tensor:
    batch = processor(text=[text], return_tensors="pt")
    return backbone(model)(**batch).last_hidden_state[0, 0]


def test_bidirectional_attention_lets_early_tokens_see_later_ones(checkpoints):
    processor = load_processor(checkpoints["embedder"])
    causal = load_model(checkpoints["embedder"])
    bidirectional = load_model(checkpoints["embedder"])
    make_bidirectional(bidirectional)
    with torch.no_grad():
        # Causal: the first token's state ignores what follows (up to float sums over other
        # lengths); bidirectional: it does not.
        assert torch.allclose(_first_token_state(causal, processor, "a red circle"),
                              _first_token_state(causal, processor, "a blue square"), atol=1e-5)
        change = _first_token_state(bidirectional, processor, "a red circle") - _first_token_state(
            bidirectional, processor, "a blue square")
        assert change.abs().max() > 1e-2
        # Another instance of the same checkpoint (a judge's, say) is still causal.
        assert torch.equal(_first_token_state(load_model(checkpoints["embedder"]), processor, "a red circle"),
                           _first_token_state(causal, processor, "a red circle"))


def test_bidirectional_embeddings_ignore_padding(checkpoints):
    fmt = resolve_input_format(checkpoints["embedder"], bidirectional=True)
    embedder = Embedder.from_pretrained(checkpoints["embedder"], bidirectional=True)
    assert embedder.format == fmt and fmt.bidirectional
    together = embedder.embed(ITEMS)  # the shorter item is left-padded
    alone = np.concatenate([embedder.embed([item]) for item in ITEMS])
    assert np.allclose(together, alone, atol=1e-5)
    causal = Embedder.from_pretrained(checkpoints["embedder"]).embed(ITEMS)
    assert not np.allclose(together, causal, atol=1e-3)


def test_only_embedders_take_pooling_and_attention_settings():
    from unime_ray.dataplane.config import EmbedConfig
    from unime_ray.mining.config import JudgeConfig
    from unime_ray.training.config import PretrainConfig, TrainRerankerConfig

    assert EmbedConfig(pooling="mean", bidirectional=True).pooling == "mean"
    with pytest.raises(ValueError):
        JudgeConfig(pooling="mean")  # not a judge setting at all
    for generative in (TrainRerankerConfig, PretrainConfig):
        with pytest.raises(ValueError, match="reads answers from the language model's head"):
            generative(bidirectional=True)
    with pytest.raises(ValueError):
        EmbedConfig(pooling="max")
