import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import SqueezeExcite


def test_zero_excitation_gives_a_gate_of_exactly_one_half():
    layer = SqueezeExcite(32)
    nn.init.zeros_(layer.fc2.weight)
    nn.init.zeros_(layer.fc2.bias)
    x = torch.randn(4, 32, 6, 6)
    with capture_attention(layer) as maps:
        y = layer(x)
    assert torch.equal(maps["tap"], torch.full((4, 32), 0.5))
    assert torch.equal(y, x * 0.5)


@pytest.mark.parametrize("pool_type", ["avg", "max"])
def test_gate_is_the_squeeze_excite_formula(pool_type):
    layer = SqueezeExcite(32, rd_ratio=1 / 4, pool_type=pool_type)
    x = torch.randn(2, 32, 5, 5)
    squeezed = x.mean(dim=(2, 3)) if pool_type == "avg" else x.flatten(2).max(dim=2).values
    hidden = F.relu(F.linear(squeezed, layer.fc1.weight[:, :, 0, 0], layer.fc1.bias))
    expected = torch.sigmoid(F.linear(hidden, layer.fc2.weight[:, :, 0, 0], layer.fc2.bias))
    with capture_attention(layer) as maps:
        y = layer(x)
    torch.testing.assert_close(maps["tap"], expected)
    torch.testing.assert_close(y, x * expected[:, :, None, None])


def test_gradients_reach_every_parameter():
    layer = SqueezeExcite(16, rd_ratio=1 / 4)
    x = torch.randn(3, 16, 4, 4, requires_grad=True)
    (layer(x) * torch.randn(3, 16, 4, 4)).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("channels, expected", [(64, 8), (256, 16), (2048, 128), (24, 8)])
def test_bottleneck_width_is_rounded_to_the_divisor(channels, expected):
    assert SqueezeExcite(channels).fc1.out_channels == expected


def test_explicit_bottleneck_width_wins():
    assert SqueezeExcite(64, rd_channels=5).fc1.out_channels == 5


def test_hard_sigmoid_gate():
    layer = SqueezeExcite(16, gate_layer="hard_sigmoid")
    x = torch.randn(2, 16, 3, 3)
    with capture_attention(layer) as maps:
        layer(x)
    logits = layer.fc2(layer.act(layer.fc1(x.mean(dim=(2, 3), keepdim=True)))).flatten(1)
    torch.testing.assert_close(maps["tap"], F.relu6(logits + 3) / 6)


def test_unknown_gate_lists_the_known_ones():
    with pytest.raises(ConfigError, match="gate_layer='sigmod'.*hard_sigmoid"):
        SqueezeExcite(16, gate_layer="sigmod")


def test_an_unknown_squeeze_is_refused_by_name():
    with pytest.raises(ConfigError, match="SE pool_type='median': use one of avg, max"):
        SqueezeExcite(8, pool_type="median")
