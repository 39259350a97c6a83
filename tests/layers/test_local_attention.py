import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError, capture_attention
from attnscope.layers import LocalSelfAttention, neighbourhood, neighbourhood_attention
from attnscope.layers.neighbourhood import choose_implementation, local_attention, neighbourhood_mask
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


IMPLEMENTATIONS = ("shifted", "dense", "reference")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kernel_size, size", [(3, (5, 6)), (5, (4, 6)), (7, (3, 3))])
def test_equals_the_per_pixel_definition_forward_and_backward(kernel_size, size, implementation):
    torch.manual_seed(0)
    layer = LocalSelfAttention(6, 8, kernel_size=kernel_size, heads=2, implementation=implementation)
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


@pytest.mark.parametrize("implementation, size", [("shifted", 12), ("reference", 12), ("dense", 9)])
def test_autograd_keeps_no_unfolded_keys_or_values(implementation, size):
    """The unfold formulation keeps 2 * B * C * k^2 * H * W numbers; ours keeps a small fraction."""
    batch, channels, kernel = 2, 32, 7
    layer = LocalSelfAttention(channels, channels, kernel_size=kernel, heads=4, implementation=implementation)
    x = torch.randn(batch, channels, size, size)
    _, saved = saved_tensor_bytes(lambda: layer(x))
    unfolded_keys_and_values = 2 * batch * channels * kernel**2 * size * size * 4
    assert saved < unfolded_keys_and_values / 4


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_map_costs_nothing_without_capture(monkeypatch, implementation):
    calls = []
    for name in ("attention_received", "dense_attention_received"):
        original = getattr(neighbourhood, name)
        monkeypatch.setattr(neighbourhood, name, lambda *a, original=original: calls.append(1) or original(*a))
    layer = LocalSelfAttention(8, heads=2, kernel_size=3, implementation=implementation)
    layer(torch.randn(1, 8, 5, 5))
    assert calls == []
    with capture_attention(layer):
        layer(torch.randn(1, 8, 5, 5))
    assert calls == [1]


def random_inputs(batch, heads, head_dim, size, kernel_size, dtype=torch.float64):
    generator = torch.Generator().manual_seed(7)
    shapes = [(batch, heads, head_dim, *size)] * 3 + [(kernel_size, head_dim // 2)] * 2
    return [torch.randn(shape, generator=generator, dtype=dtype, requires_grad=True) for shape in shapes]


def outputs_and_gradients(implementation, inputs, kernel_size):
    """Output, received map, and the gradient of every input under a loss on both."""
    output, received = local_attention(*inputs, kernel_size, implementation=implementation, received=True)
    generator = torch.Generator().manual_seed(3)
    upstream = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    received_weight = torch.randn(received.shape, generator=generator, dtype=received.dtype)
    # The received map is differentiated too: attention supervision trains through it.
    loss = (output * upstream).sum() + 100 * (received * received_weight).sum()
    return [output, received, *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("implementation", ["shifted", "dense"])
@pytest.mark.parametrize(
    "kernel_size, size, head_dim",
    [(7, (12, 11), 4), (7, (7, 7), 8), (7, (4, 4), 16), (5, (9, 13), 6), (3, (2, 5), 2)],
)
def test_fast_formulations_equal_the_reference(implementation, kernel_size, size, head_dim):
    inputs = random_inputs(2, 3, head_dim, size, kernel_size)
    expected = outputs_and_gradients("reference", inputs, kernel_size)
    got = outputs_and_gradients(implementation, inputs, kernel_size)
    names = ["output", "received", "query", "key", "value", "rel_rows", "rel_cols"]
    for name, value, reference_value in zip(names, got, expected, strict=True):
        # Both take the softmax in float32, so float64 inputs agree to float32 rounding.
        torch.testing.assert_close(value, reference_value, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("implementation", ["shifted", "dense"])
def test_bfloat16_inputs_are_computed_in_float32(implementation):
    """Under autocast the projections give bfloat16; the fast formulations compute in float32 anyway."""
    inputs = random_inputs(2, 2, 4, (9, 9), 7, dtype=torch.float32)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = local_attention(*low, 7, implementation=implementation)
    output.float().sum().backward()
    exact, _ = local_attention(*[t.detach().to(torch.bfloat16).double() for t in inputs], 7, implementation="reference")
    assert output.dtype == torch.bfloat16
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in low)
    # only the bfloat16 rounding of the output remains (3 significant digits)
    torch.testing.assert_close(output.double(), exact, atol=2e-2, rtol=1e-2)


def test_auto_takes_dense_attention_where_its_scores_cost_less_than_the_offset_passes():
    # 2 H W < head_dim k^2 on maps of at most 256 pixels
    assert choose_implementation(7, 7, 7, head_dim=4) == "dense"
    assert choose_implementation(9, 10, 7, head_dim=4) == "dense"  # 180 < 196
    assert choose_implementation(10, 10, 7, head_dim=4) == "shifted"  # 200
    assert choose_implementation(14, 14, 7, head_dim=8) == "shifted"  # 392, not < 392
    assert choose_implementation(14, 14, 7, head_dim=16) == "dense"
    assert choose_implementation(28, 28, 7, head_dim=64) == "shifted"  # the score matrix leaves the cache
    assert choose_implementation(5, 5, 3, head_dim=4) == "shifted"


def test_an_unknown_implementation_is_named():
    with pytest.raises(ConfigError, match="implementation='fast'.*auto, shifted, dense, reference"):
        LocalSelfAttention(8, heads=2, implementation="fast")


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


@pytest.mark.parametrize("implementation", ["shifted", "dense"])
def test_a_channels_last_input_gives_what_a_contiguous_one_gives(implementation):
    """A channels_last network hands the kernel strided views; it copies them once, the results are the same."""
    torch.manual_seed(0)
    layer = LocalSelfAttention(8, 8, kernel_size=3, heads=2, implementation=implementation).double()
    x = torch.randn(2, 8, 9, 10, dtype=torch.float64)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        layer.zero_grad()
        inputs = x.clone().contiguous(memory_format=memory_format).requires_grad_()
        with capture_attention(layer) as maps:
            output = layer(inputs)
        (output * torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)).sum().backward()
        results.append([output, maps["tap"], inputs.grad, *(p.grad for p in layer.parameters())])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
