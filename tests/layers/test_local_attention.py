import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import LocalSelfAttention, neighbourhood_attention
from attnscope.layers.local_attention import neighbourhood_mask
from attnscope.profiling import saved_tensor_bytes


def reference(layer: LocalSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's definition, one pixel at a time: output (B, C, H, W) and received map (B, heads, H, W)."""
    batch, _, height, width = x.shape
    heads, dim, radius = layer.heads, layer.head_dim, layer.kernel_size // 2
    query, key, value = (
        t.reshape(batch, heads, dim, height, width) for t in F.conv2d(x, layer.qkv.weight).chunk(3, dim=1)
    )
    pixels, received = [], torch.zeros(batch, heads, height, width)
    for b in range(batch):
        for h in range(heads):
            for y in range(height):
                for x_ in range(width):
                    logits, values, places = [], [], []
                    for dy in range(-radius, radius + 1):
                        for dx in range(-radius, radius + 1):
                            yy, xx = y + dy, x_ + dx
                            if 0 <= yy < height and 0 <= xx < width:
                                relative = torch.cat([layer.rel_rows[dy + radius], layer.rel_cols[dx + radius]])
                                logits.append(query[b, h, :, y, x_] * layer.scale @ (key[b, h, :, yy, xx] + relative))
                                values.append(value[b, h, :, yy, xx])
                                places.append((yy, xx))
                    weights = torch.softmax(torch.stack(logits), dim=0)
                    pixels.append(weights @ torch.stack(values))
                    for weight, (yy, xx) in zip(weights.detach(), places, strict=True):
                        received[b, h, yy, xx] += weight / (height * width)
    output = torch.stack(pixels).reshape(batch, heads, height, width, dim).permute(0, 1, 4, 2, 3)
    return output.reshape(batch, heads * dim, height, width), received


@pytest.mark.parametrize("kernel_size, size", [(3, (5, 6)), (5, (4, 6)), (7, (3, 3))])
def test_equals_the_per_pixel_definition_forward_and_backward(kernel_size, size):
    layer = LocalSelfAttention(6, 8, kernel_size=kernel_size, heads=2)
    x = torch.randn(2, 6, *size, requires_grad=True)
    upstream = torch.randn(2, 8, *size)

    with capture_attention(layer) as maps:
        output = layer(x)
    grads = torch.autograd.grad((output * upstream).sum(), [x, *layer.parameters()])
    expected, expected_received = reference(layer, x)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [x, *layer.parameters()])

    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps["tap"], expected_received, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps["tap"].sum(dim=(2, 3)), torch.ones(2, 2))


def test_neighbours_outside_the_image_are_excluded_not_zero():
    """A zero key would still take softmax mass; an excluded one takes none."""
    mask = neighbourhood_mask(4, 5, 3)
    assert mask.shape == (9, 4, 5)
    assert mask[:, 1:3, 1:4].all()
    assert mask[4].all()  # the centre is always inside
    assert not mask[0, 0, 0] and not mask[8, 3, 4]
    assert mask.sum() == sum(
        (0 <= y + dy < 4) and (0 <= x + dx < 5)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        for y in range(4)
        for x in range(5)
    )
    query = torch.randn(1, 1, 2, 4, 5)
    _, attention = neighbourhood_attention(
        query, torch.randn(1, 1, 2, 4, 5), torch.randn(1, 1, 2, 4, 5), torch.randn(3, 1), torch.randn(3, 1), 3
    )
    assert (attention[0, 0][~mask] == 0).all()
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(1, 1, 4, 5))


def test_translation_equivariant_in_the_interior():
    layer = LocalSelfAttention(4, 8, kernel_size=3, heads=2)
    image = torch.randn(1, 4, 14, 14)
    whole = layer(image)
    shifted = layer(image[:, :, 2:12, 3:13])
    # Pixels at least one radius from the crop's border see the same neighbours in both.
    torch.testing.assert_close(shifted[:, :, 1:-1, 1:-1], whole[:, :, 3:11, 4:12], atol=1e-6, rtol=1e-5)


def test_a_one_pixel_neighbourhood_is_a_value_projection():
    layer = LocalSelfAttention(5, 8, kernel_size=1, heads=4)
    x = torch.randn(2, 5, 6, 7)
    value_weight = layer.qkv.weight.chunk(3, dim=0)[2]
    torch.testing.assert_close(layer(x), F.conv2d(x, value_weight), atol=1e-6, rtol=1e-5)


def test_stride_average_pools_the_output():
    strided = LocalSelfAttention(4, 8, kernel_size=3, heads=2, stride=2)
    plain = LocalSelfAttention(4, 8, kernel_size=3, heads=2)
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(strided(x), F.avg_pool2d(plain(x), 2))


def test_autograd_keeps_no_unfolded_keys_or_values():
    """The unfold formulation keeps 2 * B * C * k^2 * H * W numbers; ours keeps a small fraction."""
    batch, channels, size, kernel = 2, 32, 12, 7
    layer = LocalSelfAttention(channels, channels, kernel_size=kernel, heads=4)
    x = torch.randn(batch, channels, size, size)
    _, saved = saved_tensor_bytes(lambda: layer(x))
    unfolded_keys_and_values = 2 * batch * channels * kernel**2 * size * size * 4
    assert saved < unfolded_keys_and_values / 4


def test_the_map_costs_nothing_without_capture(monkeypatch):
    import attnscope.layers.local_attention as module

    calls = []
    original = module.attention_received
    monkeypatch.setattr(module, "attention_received", lambda *a: calls.append(1) or original(*a))
    layer = LocalSelfAttention(8, heads=2, kernel_size=3)
    layer(torch.randn(1, 8, 5, 5))
    assert calls == []
    with capture_attention(layer):
        layer(torch.randn(1, 8, 5, 5))
    assert calls == [1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"heads": 3}, "heads=3"),
        ({"out_channels": 12, "heads": 4}, "even width"),
        ({"stride": 0}, "stride must be a positive integer"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        LocalSelfAttention(8, **options)


def test_stride_on_an_odd_side_matches_a_strided_convolution():
    layer = LocalSelfAttention(8, 8, kernel_size=3, heads=2, stride=2)
    x = torch.randn(1, 8, 7, 7)
    conv = torch.nn.Conv2d(8, 8, kernel_size=1, stride=2)
    assert layer(x).shape[-2:] == conv(x).shape[-2:] == (4, 4)
    # the last row and column average only the pixels that exist
    unpooled = LocalSelfAttention(8, 8, kernel_size=3, heads=2, stride=1)
    unpooled.load_state_dict(layer.state_dict())
    full = unpooled(x)
    torch.testing.assert_close(layer(x)[..., 3, 3], full[..., 6, 6])
    torch.testing.assert_close(layer(x)[..., 0, 3], full[..., 0:2, 6].mean(-1))
