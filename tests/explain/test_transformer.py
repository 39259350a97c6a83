"""Attention rollout and transformer attribution against their formulas written out here, on random attention
matrices and on a small vision transformer; refused, with what to use, on a convolutional network."""

import pytest
import torch

from attnscope.errors import ConfigError
from attnscope.explain.methods import create_cam
from attnscope.explain.transformer import gradient_rollout, rollout
from attnscope.models import create_model
from attnscope.models.vit import keep_attention

SMALL = {"embed_dim": 48, "depth": 3, "num_heads": 3}


def random_attention(batch=2, heads=3, tokens=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(-1)


def test_rollout_is_the_product_of_the_residual_mixed_row_normalised_attentions():
    layers = [random_attention(seed=s) for s in range(3)]
    expected = []
    for b in range(2):
        product = torch.eye(5)
        for attention in layers:  # Abnar & Zuidema 2020, written out: 0.5 A + 0.5 I, rows summing to one
            mixed = 0.5 * attention[b].mean(0) + 0.5 * torch.eye(5)
            mixed = mixed / mixed.sum(-1, keepdim=True)
            product = mixed @ product
        expected.append(product)
    torch.testing.assert_close(rollout(layers), torch.stack(expected))
    fused_max = rollout(layers, head_fusion="max")
    assert not torch.allclose(fused_max, rollout(layers))
    torch.testing.assert_close(rollout(layers).sum(-1), torch.ones(2, 5))  # a product of row-stochastic matrices


def test_discarding_zeroes_the_weakest_entries_but_the_class_tokens_own():
    attention = random_attention(batch=1, heads=1, tokens=4)
    attention[0, 0, 0, 0] = 1e-6  # the weakest of all: still kept
    kept_once = rollout([attention], discard_ratio=0.5)
    fused = attention[0, 0].clone()
    flat = fused.flatten()
    weakest = flat.argsort()[:8]
    flat[weakest] = 0
    flat[0] = attention[0, 0, 0, 0]
    mixed = (flat.view(4, 4) + torch.eye(4)) / 2
    torch.testing.assert_close(kept_once[0], mixed / mixed.sum(-1, keepdim=True))
    with pytest.raises(ConfigError, match=r"discard_ratio=1.0 must lie in \[0, 1\)"):
        rollout([attention], discard_ratio=1.0)
    with pytest.raises(ConfigError, match="head_fusion='median'"):
        rollout([attention], head_fusion="median")


def test_gradient_rollout_accumulates_the_positive_gradient_weighted_attention():
    layers = [random_attention(seed=s) for s in range(2)]
    grads = [random_attention(seed=10 + s) - 0.2 for s in range(2)]
    relevance = torch.eye(5).repeat(2, 1, 1)
    for attention, gradient in zip(layers, grads, strict=True):  # Chefer et al. 2021, eq. 5-6 written out
        relevance = relevance + (gradient * attention).clamp(min=0).mean(1) @ relevance
    torch.testing.assert_close(gradient_rollout(layers, grads), relevance)


def test_on_a_vit_both_maps_are_the_class_tokens_row_and_only_attribution_depends_on_the_class():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=3, **SMALL).eval()
    images = torch.randn(2, 3, 64, 64)
    rolled = create_cam("attention_rollout", model)
    first, second = rolled.compute(images, [0, 0]), rolled.compute(images, [2, 2])
    torch.testing.assert_close(first.maps, second.maps)  # class-agnostic
    with keep_attention(model) as modules:
        logits = model(images)
        kept = [m.kept for m in modules]
        expected = rollout(kept)[:, 0, 1:].reshape(2, 4, 4)
        score = logits[:, 2].sum()
        gradients = torch.autograd.grad(score, kept)
        attributed = gradient_rollout([k.detach() for k in kept], gradients)[:, 0, 1:].reshape(2, 4, 4).clamp(min=0)
    torch.testing.assert_close(first.raw["attention_rollout"], expected.detach())
    attribution = create_cam("transformer_attribution", model)
    for_two = attribution.compute(images, [2, 2])
    torch.testing.assert_close(for_two.raw["transformer_attribution"], attributed)
    assert not torch.allclose(attribution.compute(images, [0, 0]).raw["transformer_attribution"], attributed)
    assert for_two.maps.shape == (2, 64, 64) and 0 <= float(for_two.maps.min()) <= float(for_two.maps.max()) <= 1
    assert not model.training and all(m.kept is None for m in modules)


def test_on_a_cnn_the_transformer_methods_are_refused_and_left_out_of_all(tmp_path):
    from attnscope.explain.explainer import applicable_methods

    cnn = create_model("attn_vgg_tiny")
    for method in ("attention_rollout", "transformer_attribution"):
        with pytest.raises(ConfigError, match=f"{method} reads a vision transformer's attention; AttnVGG has none"):
            create_cam(method, cnn)
    everything = ["attention", "gradcam", "attention_rollout", "transformer_attribution"]
    assert applicable_methods(everything, ["all"], cnn) == ["attention", "gradcam"]
    with pytest.raises(ConfigError, match="attention_rollout read a vision transformer's attention"):
        applicable_methods(everything, ["attention_rollout"], cnn)
    vit = create_model("vit_tiny_patch16_224", **SMALL)
    assert applicable_methods(everything, ["all"], vit) == everything
