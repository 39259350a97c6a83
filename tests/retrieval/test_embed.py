"""Embeddings: pooled blocks computed as documented, attention pooling, PCA against a reference."""

import numpy as np
import pytest
import torch

from attnscope.errors import ConfigError
from attnscope.models import create_model
from attnscope.retrieval.embed import (
    EmbeddingConfig,
    attention_weights,
    embed_images,
    embed_images_and_tokens,
    fit_pca,
    l2_normalise,
    pool_stage,
)


def test_pool_stage_gives_normalised_average_max_and_weighted_blocks():
    features = torch.randn(2, 3, 4, 5)
    weights = torch.rand(2, 4, 5)
    weights = weights / weights.sum(dim=(1, 2), keepdim=True)
    average, maximum, weighted = pool_stage(features, weights)
    expected_weighted = torch.einsum("bchw,bhw->bc", features, weights)
    torch.testing.assert_close(average, l2_normalise(features.flatten(2).mean(-1)))
    torch.testing.assert_close(maximum, l2_normalise(features.flatten(2).max(-1).values))
    torch.testing.assert_close(weighted, l2_normalise(expected_weighted))
    assert len(pool_stage(features, None)) == 2


def test_attention_weights_sum_to_one_and_a_blank_map_weighs_evenly():
    maps = {"a": torch.rand(2, 3, 3), "blank": torch.zeros(2, 3, 3)}
    weights = attention_weights(maps, (6, 6))
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))
    blank_only = attention_weights({"blank": torch.zeros(1, 2, 2)}, (4, 4))
    torch.testing.assert_close(blank_only, torch.full((1, 4, 4), 1 / 16))


def test_embedding_of_a_grid_attention_model_matches_a_reference_from_its_stages():
    model = create_model("attn_resnet_tiny", num_classes=3, in_chans=3).eval()
    images = torch.randn(2, 3, 64, 64)
    config = EmbeddingConfig(stages=("layer3", "layer4"), attention_pooling=True)
    vectors = embed_images(model, images, config)
    with torch.no_grad():
        _, _, stage3, stage4 = model.forward_stages(images)
        from attnscope.layers.tap import capture_attention, native_maps

        with capture_attention(model, detach=True) as captured:
            model(images)
    maps = native_maps(captured)
    assert sorted(maps) == ["attn_layer2", "attn_layer3"]
    blocks = []
    for stage in (stage3, stage4):
        blocks += pool_stage(stage, attention_weights(maps, tuple(stage.shape[-2:])))
    torch.testing.assert_close(vectors, l2_normalise(torch.cat(blocks, dim=1)))
    assert vectors.shape == (2, 3 * (model.stage_channels[2] + model.stage_channels[3]))
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    plain = embed_images(model, images, EmbeddingConfig(stages=("layer4",)))
    assert plain.shape == (2, 2 * model.stage_channels[3])


def test_tokens_come_from_the_same_forward_pass_as_the_embedding():
    """The re-ranker's tokens: the last stage's map average-pooled to at most 4 x 4, with no second pass."""
    model = create_model("attn_resnet_tiny", num_classes=3, in_chans=3).eval()
    images = torch.randn(2, 3, 64, 64)
    config = EmbeddingConfig(stages=("layer3", "layer4"), attention_pooling=True)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    vectors, tokens = embed_images_and_tokens(model, images, config)
    assert calls == [1]
    torch.testing.assert_close(vectors, embed_images(model, images, config))
    with torch.no_grad():
        stage4 = model.forward_stages(images)[3]
    assert stage4.shape[-2:] == (2, 2)  # smaller than 4 x 4: every position is a token
    torch.testing.assert_close(tokens, stage4.flatten(2).transpose(1, 2))

    larger_images = torch.randn(1, 3, 256, 256)
    _, larger = embed_images_and_tokens(model, larger_images, EmbeddingConfig(stages=("layer3",)))
    with torch.no_grad():
        stage3 = model.forward_stages(larger_images)[2]
    assert stage3.shape[-2:] == (16, 16)
    # each token is the mean of a 4 x 4 block of the 16 x 16 map
    blocks = stage3.reshape(1, -1, 4, 4, 4, 4).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(larger, blocks)


def test_default_stage_is_the_cam_layer_and_bad_choices_are_named():
    model = create_model("resnet_tiny", num_classes=2, in_chans=3).eval()
    images = torch.randn(1, 3, 64, 64)
    assert embed_images(model, images, EmbeddingConfig()).shape == (1, 2 * model.stage_channels[3])
    with pytest.raises(ConfigError, match="no spatial attention maps"):
        embed_images(model, images, EmbeddingConfig(attention_pooling=True))
    with pytest.raises(ConfigError, match=r"no module\(s\) \['layer9'\].*layer1"):
        embed_images(model, images, EmbeddingConfig(stages=("layer9",)))
    with pytest.raises(ConfigError, match="not a \\(B, C, h, w\\) feature map"):
        embed_images(model, images, EmbeddingConfig(stages=("fc",)))
    with pytest.raises(ConfigError, match="dtype"):
        EmbeddingConfig(dtype="int8")


def test_pca_matches_numpy_svd_and_recovers_the_main_directions():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.1, 0.1, 0.1])
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    data = data @ rotation.T + 2.0
    pca = fit_pca(data.astype(np.float32), 2)
    _, _, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
    for component, reference in zip(pca.components, vt[:2], strict=True):
        assert abs(abs(float(component @ reference)) - 1) < 1e-4  # same direction, up to sign
        assert component[np.abs(component).argmax()] > 0  # signs fixed
    projected = pca.apply(data.astype(np.float32))
    reference = (data - data.mean(0)) @ pca.components.T.astype(np.float64)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(projected, reference, atol=1e-4)
    with pytest.raises(ConfigError, match="pca_dim=7"):
        fit_pca(data.astype(np.float32), 7)
