import pytest
import torch

from attnscope import ConfigError, capture_attention, create_attn
from attnscope.layers import AttentionPool2d


def ilse_pool(layer: AttentionPool2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ilse et al. 2018's attention MIL pooling written out over the positions as instances."""
    instances = x.flatten(2).transpose(1, 2)  # (B, N, C)
    v = layer.attention_v.weight[:, :, 0, 0]
    hidden = torch.tanh(instances @ v.T + layer.attention_v.bias)
    if layer.attention_u is not None:
        u = layer.attention_u.weight[:, :, 0, 0]
        hidden = hidden * torch.sigmoid(instances @ u.T + layer.attention_u.bias)
    scores = hidden @ layer.score.weight[0, :, 0, 0]  # (B, N); a bias would cancel in the softmax
    weights = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
    return (weights[:, :, None] * instances).sum(dim=1), weights


@pytest.mark.parametrize("gated", [False, True])
def test_pool_is_ilse_attention_pooling(gated):
    torch.manual_seed(0)
    layer = AttentionPool2d(12, hidden=7, gated=gated)
    torch.nn.init.normal_(layer.score.weight)
    x = torch.randn(3, 12, 5, 4)
    expected, weights = ilse_pool(layer, x)
    with capture_attention(layer) as maps:
        pooled = layer.pool(x)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(maps["tap"], weights.reshape(3, 1, 5, 4))
    torch.testing.assert_close(maps["tap"].sum(dim=(1, 2, 3)), torch.ones(3))


def test_forward_keeps_the_shape_and_its_mean_is_the_pooled_vector():
    torch.manual_seed(1)
    layer = AttentionPool2d(8, hidden=4, gated=True)
    x = torch.randn(2, 8, 6, 6)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=(2, 3)), layer.pool(x))


def test_a_new_layer_pools_like_global_average_pooling():
    layer = AttentionPool2d(8, hidden=4)
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(layer.pool(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(layer(x), x)


def test_a_dominant_position_takes_the_pool():
    torch.manual_seed(2)
    layer = AttentionPool2d(4, hidden=4)
    x = torch.zeros(1, 4, 3, 3)
    x[0, :, 1, 2] = 3.0
    with torch.no_grad():  # score a position by its first channel, steeply
        layer.attention_v.weight.zero_()
        layer.attention_v.weight[0, 0] = 1.0
        layer.attention_v.bias.zero_()
        layer.score.weight[0, 0] = 40.0
    torch.testing.assert_close(layer.pool(x), x[:, :, 1, 2], atol=1e-6, rtol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    layer = AttentionPool2d(6, hidden=5, gated=True)
    torch.nn.init.normal_(layer.score.weight)  # from zero, V and U get no gradient on the first step
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    (layer.pool(x) * torch.randn(2, 6)).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad is not None


def test_registered_and_checked():
    assert isinstance(create_attn("attn_pool", 8, gated=True), AttentionPool2d)
    with pytest.raises(ConfigError, match="hidden"):
        AttentionPool2d(8, hidden=0)
