"""Every layer trains in float32 and bfloat16 on the CPU."""

import pytest
import torch

from attnscope import capture_attention, create_attn, list_attn

OPTIONS = {"local": {"kernel_size": 5, "heads": 4}, "global": {"heads": 4}, "grid": {"global_channels": 16}}


def run(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict, torch.nn.Module]:
    torch.manual_seed(0)
    layer = create_attn(name, 16, **OPTIONS.get(name, {}))
    if name == "global":
        with torch.no_grad():
            layer.gamma.fill_(1.0)
    layer = layer.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(2, 16, 6, 6).to(dtype)
    with capture_attention(layer) as maps:
        out = layer(x, torch.randn(2, 16, 3, 3).to(dtype)) if name == "grid" else layer(x)
    out.float().square().mean().backward()
    return out, maps, layer


@pytest.mark.parametrize("name", list_attn())
def test_forward_and_backward_in_bfloat16_track_float32(name):
    reference, reference_maps, _ = run(name, torch.float32)
    output, maps, layer = run(name, torch.bfloat16)
    assert output.dtype == torch.bfloat16
    relative = (output.float() - reference).norm() / reference.norm()
    assert relative < 0.03, f"{name}: bfloat16 output is {relative:.3f} away from float32"
    for key, value in maps.items():
        assert value.dtype == torch.bfloat16, key
        torch.testing.assert_close(value.float(), reference_maps[key], atol=0.02, rtol=0.05)
    for parameter_name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == torch.bfloat16, parameter_name
        assert torch.isfinite(parameter.grad.float()).all(), parameter_name
