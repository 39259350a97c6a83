import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import GlobalSelfAttention, position_encoding_2d
from attnscope.layers.global_attention import attention_received
from attnscope.profiling import saved_tensor_bytes


def explicit(layer: GlobalSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V written out: output and the (B, heads, N, N) attention matrix."""
    batch, channels, height, width = x.shape
    heads, dim = layer.heads, layer.head_dim
    encoded = x + position_encoding_2d(channels, height, width)
    query, key = F.conv2d(encoded, layer.query_key.weight).chunk(2, dim=1)
    value = F.conv2d(x, layer.value.weight)

    def split(t):
        return t.reshape(batch, heads, dim, height * width).transpose(-2, -1)

    attention = torch.softmax(split(query) @ split(key).transpose(-2, -1) / dim**0.5, dim=-1)
    attended = (attention @ split(value)).transpose(-2, -1).reshape(batch, channels, height, width)
    return x + layer.gamma * F.conv2d(attended, layer.proj.weight, layer.proj.bias), attention


def test_is_the_identity_at_initialisation():
    layer = GlobalSelfAttention(16, heads=4)
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(layer(x), x)


def test_matches_explicit_softmax_attention():
    layer = GlobalSelfAttention(16, heads=4)
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(2, 16, 5, 6)
    with capture_attention(layer) as maps:
        output = layer(x)
    expected, attention = explicit(layer, x)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    received = maps["tap"]
    assert received.shape == (2, 4, 5, 6)
    torch.testing.assert_close(received.flatten(2), attention.mean(dim=-2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(received.sum(dim=(2, 3)), torch.ones(2, 4))


def test_gradients_reach_every_parameter_once_gamma_moves():
    layer = GlobalSelfAttention(8, heads=2)
    x = torch.randn(2, 8, 4, 4)
    layer(x).pow(2).sum().backward()
    assert layer.gamma.grad.abs() > 0  # the only way out of the identity
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    layer.zero_grad()
    layer(x).pow(2).sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_autograd_keeps_no_positions_by_positions_matrix():
    """The fused attention kernel keeps O(N) per head for backward, the math path O(N^2)."""
    batch, channels, heads, size = 2, 32, 4, 24
    layer = GlobalSelfAttention(channels, heads=heads)
    _, saved = saved_tensor_bytes(lambda: layer(torch.randn(batch, channels, size, size)))
    attention_matrix = batch * heads * (size * size) ** 2 * 4
    assert saved < attention_matrix / 4


def test_chunked_received_attention_equals_one_pass():
    query, key = torch.randn(2, 3, 50, 4), torch.randn(2, 3, 50, 4)
    torch.testing.assert_close(attention_received(query, key, chunk=7), attention_received(query, key, chunk=64))


def test_position_encoding_tells_every_position_apart():
    code = position_encoding_2d(16, 6, 9)
    assert code.shape == (16, 6, 9)
    assert code.abs().max() <= 1
    flat = code.flatten(1).T
    assert torch.cdist(flat, flat).add(torch.eye(54) * 10).min() > 1e-3


def test_the_map_costs_nothing_without_capture(monkeypatch):
    import attnscope.layers.global_attention as module

    calls = []
    original = module.attention_received
    monkeypatch.setattr(module, "attention_received", lambda *a: calls.append(1) or original(*a))
    layer = GlobalSelfAttention(8, heads=2)
    layer(torch.randn(1, 8, 3, 3))
    assert calls == []
    with capture_attention(layer):
        layer(torch.randn(1, 8, 3, 3))
    assert calls == [1]


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="divisible by heads"):
        GlobalSelfAttention(12, heads=5)
    with pytest.raises(ConfigError, match="position_encoding=False"):
        GlobalSelfAttention(6, heads=3)
    GlobalSelfAttention(6, heads=3, position_encoding=False)(torch.randn(1, 6, 2, 2))
