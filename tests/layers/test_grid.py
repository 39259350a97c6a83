import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import GridAttention


def run(layer, local, global_):
    with capture_attention(layer) as maps:
        pooled = layer(local, global_)
    return pooled, maps["tap"]


def test_softmax_map_sums_to_one_and_output_is_weighted_sum():
    layer = GridAttention(16, 24, 8, normalize="softmax")
    local, global_ = torch.randn(3, 16, 7, 7), torch.randn(3, 24, 3, 3)
    pooled, attention = run(layer, local, global_)
    assert attention.shape == (3, 1, 7, 7)
    assert (attention > 0).all()
    torch.testing.assert_close(attention.sum(dim=(1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(pooled, (attention * local).sum(dim=(2, 3)))


def test_sigmoid_map_lies_in_unit_interval_and_output_is_mean():
    layer = GridAttention(16, 24, 8, normalize="sigmoid")
    local, global_ = torch.randn(3, 16, 7, 7), torch.randn(3, 24, 3, 3)
    pooled, attention = run(layer, local, global_)
    assert ((attention > 0) & (attention < 1)).all()
    torch.testing.assert_close(pooled, (attention * local).mean(dim=(2, 3)))


@pytest.mark.parametrize("local_size, global_size", [((7, 7), (3, 3)), ((10, 10), (4, 4)), ((9, 13), (5, 3))])
def test_scores_follow_the_paper_for_any_two_sizes(local_size, global_size):
    """c = phi(relu(W_l l + W_g up(g))), with g resized first, as the paper writes it."""
    layer = GridAttention(8, 12, 6)
    local, global_ = torch.randn(2, 8, *local_size), torch.randn(2, 12, *global_size)
    upsampled = F.interpolate(global_, size=local_size, mode="bilinear", align_corners=False)
    expected = F.conv2d(
        F.relu(F.conv2d(local, layer.local_proj.weight) + F.conv2d(upsampled, layer.global_proj.weight)),
        layer.phi.weight,
        layer.phi.bias,
    )
    torch.testing.assert_close(layer.scores(local, global_), expected)
    _, attention = run(layer, local, global_)
    assert attention.shape[-2:] == local_size
    torch.testing.assert_close(attention.flatten(1), F.softmax(expected.flatten(1), dim=1))


def test_the_global_map_guides_the_attention():
    layer = GridAttention(8, 8, 8)
    local = torch.randn(1, 8, 6, 6)
    _, first = run(layer, local, torch.randn(1, 8, 2, 2))
    _, second = run(layer, local, torch.randn(1, 8, 2, 2))
    assert not torch.allclose(first, second)


def test_default_widths_match_attnmel():
    assert GridAttention(256, 512).local_proj.out_channels == 256
    assert GridAttention(512, 512).global_proj.out_channels == 256
    assert GridAttention(64).global_proj.in_channels == 64


def test_gradients_reach_every_parameter():
    layer = GridAttention(8, 8, 4, normalize="sigmoid")
    layer(torch.randn(2, 8, 5, 5), torch.randn(2, 8, 3, 3)).pow(2).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="normalize='softmx'"):
        GridAttention(8, normalize="softmx")
    with pytest.raises(ConfigError, match="attn_channels"):
        GridAttention(8, 8, 0)
    with pytest.raises(ConfigError, match="batches differ"):
        GridAttention(8)(torch.randn(2, 8, 4, 4), torch.randn(3, 8, 2, 2))
