import itertools

import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import CBAM, ChannelGate, SpatialGate, SqueezeExcite


def mlp(gate: ChannelGate, descriptor: torch.Tensor) -> torch.Tensor:
    return F.linear(F.relu(F.linear(descriptor, gate.fc1.weight[:, :, 0, 0])), gate.fc2.weight[:, :, 0, 0])


def test_channel_gate_is_the_cbam_formula():
    gate = ChannelGate(32, rd_ratio=1 / 8)
    x = torch.randn(2, 32, 5, 5)
    expected = torch.sigmoid(mlp(gate, x.mean(dim=(2, 3))) + mlp(gate, x.amax(dim=(2, 3))))
    with capture_attention(gate) as maps:
        y = gate(x)
    torch.testing.assert_close(maps["tap"], expected)
    torch.testing.assert_close(y, x * expected[:, :, None, None])


def test_channel_gate_sees_the_max_pooled_descriptor():
    """Moving mass inside one channel keeps its mean but raises its max: only a max-aware gate changes."""
    x = torch.randn(1, 16, 6, 6)
    moved = x.clone()
    moved[0, 3, 0, 0] += 5.0
    moved[0, 3, 1, 1] -= 5.0
    torch.testing.assert_close(moved.mean(dim=(2, 3)), x.mean(dim=(2, 3)))
    channel_gate, squeeze_excite = ChannelGate(16, rd_ratio=1 / 4), SqueezeExcite(16, rd_ratio=1 / 4)
    assert not torch.allclose(channel_gate.weights(x), channel_gate.weights(moved))
    with capture_attention(squeeze_excite) as maps:
        squeeze_excite(x)
        average_only = maps["tap"]
        squeeze_excite(moved)
    torch.testing.assert_close(maps["tap"], average_only)


def test_spatial_gate_is_the_cbam_formula():
    gate = SpatialGate(kernel_size=5).eval()
    x = torch.randn(2, 8, 9, 9)
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    norm = gate.norm
    expected = torch.sigmoid(
        F.batch_norm(
            F.conv2d(pooled, gate.conv.weight, padding=2),
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            eps=norm.eps,
        )
    )
    with capture_attention(gate) as maps:
        y = gate(x)
    torch.testing.assert_close(maps["tap"], expected)
    torch.testing.assert_close(y, x * expected)


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_spatial_kernel_sets_the_reach_of_a_change(kernel_size):
    gate = SpatialGate(kernel_size).eval()
    assert gate.conv.weight.shape == (1, 2, kernel_size, kernel_size)
    x = torch.randn(1, 4, 15, 15)
    changed = x.clone()
    changed[0, :, 7, 7] += 3.0
    differs = (gate.weights(x) - gate.weights(changed)).abs()[0, 0] > 1e-7
    rows, cols = torch.meshgrid(torch.arange(15), torch.arange(15), indexing="ij")
    reach = torch.maximum((rows - 7).abs(), (cols - 7).abs()) <= kernel_size // 2
    assert differs[7, 7]
    assert not differs[~reach].any()
    assert differs[reach].float().mean() > 0.5


def test_the_three_orders_compute_different_things():
    torch.manual_seed(1)
    reference = CBAM(16, rd_ratio=1 / 4).eval()
    layers = {}
    for order in ("channel_first", "spatial_first", "parallel"):
        layers[order] = CBAM(16, rd_ratio=1 / 4, order=order).eval()
        layers[order].load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 8, 8)
    outputs = {order: layer(x) for order, layer in layers.items()}
    cg, sg = reference.channel_gate, reference.spatial_gate
    torch.testing.assert_close(outputs["channel_first"], sg(cg(x)))
    torch.testing.assert_close(outputs["spatial_first"], cg(sg(x)))
    torch.testing.assert_close(outputs["parallel"], x * cg.weights(x)[:, :, None, None] * sg.weights(x))
    for first, second in itertools.combinations(outputs, 2):
        assert not torch.allclose(outputs[first], outputs[second], atol=1e-4), (first, second)


def test_both_gates_are_captured():
    with capture_attention(CBAM(16)) as maps:
        CBAM(16)(torch.randn(1, 16, 4, 4))  # another instance: not captured
    assert maps == {}
    layer = CBAM(16)
    with capture_attention(layer) as maps:
        layer(torch.randn(2, 16, 4, 4))
    assert {name: tuple(m.shape) for name, m in maps.items()} == {
        "channel_gate": (2, 16),
        "spatial_gate": (2, 1, 4, 4),
    }


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="spatial_kernel must be odd"):
        CBAM(16, spatial_kernel=4)
    with pytest.raises(ConfigError, match="order='serial'"):
        CBAM(16, order="serial")
