"""Vision transformers: a timm-named state dict loads as it is and computes what a ViT written out here
computes; the fused and the explicit attention agree; the captured map is the class token's attention; CAMs
read the tokens laid out as a grid, as pytorch-grad-cam's reshape_transform would."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from attnscope.errors import ConfigError
from attnscope.layers.tap import capture_attention
from attnscope.models import create_model
from attnscope.models.vit import keep_attention

SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 3}  # vit_tiny's layout, shrunk for a unit test


def timm_state_dict(dim=48, depth=2, patch=16, grid=14, classes=5, in_chans=3, seed=0):
    """A state dict under timm's VisionTransformer names and shapes (written out from timm's module layout)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    state = {
        "cls_token": rand(1, 1, dim),
        "pos_embed": rand(1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": rand(dim, in_chans, patch, patch),
        "patch_embed.proj.bias": rand(dim),
        "norm.weight": 1 + rand(dim),
        "norm.bias": rand(dim),
        "head.weight": rand(classes, dim),
        "head.bias": rand(classes),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": 1 + rand(dim), b + "norm1.bias": rand(dim),
            b + "attn.qkv.weight": rand(3 * dim, dim), b + "attn.qkv.bias": rand(3 * dim),
            b + "attn.proj.weight": rand(dim, dim), b + "attn.proj.bias": rand(dim),
            b + "norm2.weight": 1 + rand(dim), b + "norm2.bias": rand(dim),
            b + "mlp.fc1.weight": rand(4 * dim, dim), b + "mlp.fc1.bias": rand(4 * dim),
            b + "mlp.fc2.weight": rand(dim, 4 * dim), b + "mlp.fc2.bias": rand(dim),
        }  # fmt: skip
    return state


def reference_vit(state, images, heads=3, depth=2, patch=16):
    """A ViT forward written out from the paper's equations on a state dict: logits, and each block's
    attention probabilities (B, heads, N, N) and input tokens."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = state["pos_embed"]
    side = int((pos.shape[1] - 1) ** 0.5)
    patch_pos = pos[:, 1:]
    if tuple(grid) != (side, side):
        square = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = (
            F.interpolate(square, size=tuple(grid), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        )
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1) + pos[:, :1], x + patch_pos], 1)
    attentions, inputs = [], []
    dim = x.shape[-1]
    for i in range(depth):
        b = f"blocks.{i}."
        inputs.append(x)
        h = F.layer_norm(x, (dim,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        split = lambda t: t.reshape(len(t), -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        probabilities = (q @ k.transpose(-2, -1) / (dim // heads) ** 0.5).softmax(-1)
        attentions.append(probabilities)
        out = (probabilities @ v).transpose(1, 2).reshape(len(x), -1, dim)
        x = x + F.linear(out, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        h = F.layer_norm(x, (dim,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
            state[b + "mlp.fc2.weight"],
            state[b + "mlp.fc2.bias"],
        )
        x = x + h
    x = F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    return F.linear(x[:, 0], state["head.weight"], state["head.bias"]), attentions, inputs, tuple(grid)


@pytest.mark.parametrize("size", [224, 64])  # the stored 14 x 14 position grid, and one resized to 4 x 4
def test_a_timm_state_dict_loads_whole_and_computes_the_written_out_vit(tmp_path, size):
    state = timm_state_dict()
    save_file(state, tmp_path / "vit.safetensors")
    model = create_model("vit_tiny_patch16_224", num_classes=5, pretrained=tmp_path / "vit.safetensors", **SMALL)
    assert set(model.state_dict()) == set(state)  # timm's names, none more, none fewer
    model.eval()
    images = torch.randn(2, 3, size, size)
    expected, attentions, _, grid = reference_vit(state, images)
    with torch.no_grad():
        fused = model(images)
        with capture_attention(model) as maps:
            explicit = model(images)
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(explicit, expected, atol=1e-4, rtol=1e-4)
    cls_attention = attentions[-1][:, :, 0, 1:].mean(1).reshape(2, 1, *grid)  # the last block's class token
    torch.testing.assert_close(maps["blocks.1.attn.cls_map"], cls_attention, atol=1e-5, rtol=1e-4)


def test_gradcam_reads_the_tokens_as_a_grid_like_a_reshape_transform():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=3, **SMALL).eval()
    images = torch.randn(2, 3, 64, 64)
    from attnscope.explain.methods import create_cam

    result = create_cam("gradcam", model).compute(images, [1, 2])
    assert model.default_cfg.cam_target_layer == "token_grids.1"
    # pytorch-grad-cam's recipe: hook the last block's input tokens, drop the class token, reshape to the grid
    kept = {}

    def keep(module, args):
        args[0].retain_grad()
        kept["tokens"] = args[0]

    handle = model.blocks[-1].register_forward_pre_hook(keep)
    logits = model(images)
    handle.remove()
    logits.gather(1, torch.tensor([[1], [2]])).sum().backward()
    tokens, grads = kept["tokens"][:, 1:], kept["tokens"].grad[:, 1:]
    weights = grads.mean(1, keepdim=True)  # per channel, over the patches
    expected = F.relu((weights * tokens).sum(-1)).reshape(2, 4, 4)
    torch.testing.assert_close(result.raw["token_grids.1"], expected.detach(), atol=1e-5, rtol=1e-4)


def test_keep_attention_keeps_the_probabilities_then_drops_them_and_refuses_a_cnn():
    model = create_model("vit_tiny_patch16_224", num_classes=2, **SMALL)
    with keep_attention(model) as modules:
        model(torch.randn(1, 3, 32, 32))
        assert [m.kept.shape for m in modules] == [(1, 3, 5, 5)] * 2 and modules[0].grid == (2, 2)
        torch.testing.assert_close(modules[0].kept.sum(-1), torch.ones(1, 3, 5))
    assert all(m.kept is None and not m.keep for m in modules)
    with pytest.raises(ConfigError, match="has no transformer attention"):
        with keep_attention(create_model("attn_vgg_tiny")):
            pass


def test_an_image_that_does_not_split_into_patches_and_bad_sizes_are_named():
    model = create_model("vit_tiny_patch16_224", **SMALL)
    with pytest.raises(ConfigError, match="a 30x30 image does not split into 16-pixel patches"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ConfigError, match="embed_dim=50 must be divisible by num_heads=3"):
        create_model("vit_tiny_patch16_224", embed_dim=50, depth=1)
    with pytest.raises(ConfigError, match="attention_taps=3 must lie between 0 and depth=2"):
        create_model("vit_tiny_patch16_224", attention_taps=3, **SMALL)
    assert list(create_model("vit_tiny_patch16_224", attention_taps=2, **SMALL).default_cfg.attention_taps) == [
        "blocks.0.attn.cls_map",
        "blocks.1.attn.cls_map",
    ]
