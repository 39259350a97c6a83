import pytest
import torch
from torch import nn

from attnscope import ConfigError, capture_attention
from attnscope.layers import LocalSelfAttention
from attnscope.models import create_model
from attnscope.models.resnet import Bottleneck


def params(name: str, **options) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, num_classes=1000, **options).parameters())


def test_backbones_have_torchvision_parameter_counts():
    assert params("resnet18") == 11_689_512
    assert params("resnet34") == 21_797_672
    assert params("resnet50") == 25_557_032


def test_attention_costs_match_the_papers():
    resnet50 = params("resnet50")
    assert params("se_resnet50") / resnet50 == pytest.approx(28.09 / 25.56, rel=0.005)  # Hu et al., r=16
    assert params("cbam_resnet50") / resnet50 == pytest.approx(28.09 / 25.56, rel=0.005)  # Woo et al.
    assert params("local_resnet50") < resnet50
    assert params("local_resnet50") == pytest.approx(18.0e6, rel=0.01)  # Ramachandran et al.
    assert params("local_resnet26") == pytest.approx(10.3e6, rel=0.01)


def test_block_attention_sits_after_the_last_norm_before_the_addition():
    model = create_model("se_resnet50").eval()
    block: Bottleneck = model.layer2[1]
    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.__setitem__("bn3", o.clone()))
    block.attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", (i[0].clone(), o.clone())))
    x = torch.randn(1, 512, 8, 8)
    with torch.no_grad():
        out = block(x)
    attn_in, attn_out = seen["attn"]
    torch.testing.assert_close(attn_in, seen["bn3"])
    torch.testing.assert_close(out, torch.relu(attn_out + x))


def test_local_attention_replaces_every_3x3_conv_but_keeps_the_stem():
    model = create_model("local_resnet26")
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (7, 7)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 8
    for block in blocks:
        assert isinstance(block.conv2, LocalSelfAttention) and block.conv2.kernel_size == 7
        assert all(m.kernel_size == (1, 1) for m in block.modules() if isinstance(m, nn.Conv2d))
    basic = create_model("resnet_tiny", attn="local", local_kernel=3, local_heads=2)
    assert isinstance(basic.layer1[0].conv1, LocalSelfAttention) and isinstance(
        basic.layer1[0].conv2, LocalSelfAttention
    )


def test_global_attention_blocks_start_as_the_identity():
    plain = create_model("resnet18").eval()
    with_global = create_model("resnet18", global_attn=True).eval()
    assert list(with_global.global_attn) == ["layer3", "layer4"]
    missing, unexpected = with_global.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("global_attn.") for key in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), capture_attention(with_global) as maps:
        torch.testing.assert_close(with_global(x), plain(x))
    assert set(maps) == {"global_attn.layer3", "global_attn.layer4"}
    assert list(create_model("resnet_tiny", global_attn=[2]).global_attn) == ["layer2"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attn": "grid"}, "attn_resnet"),
        ({"attn": "global"}, "global_attn"),
        ({"global_attn": [5]}, "1 to 4"),
        ({"attn": "se", "attn_stages": [0, 4]}, r"attn_stages=\[0, 4\]: stages are numbered 1 to 4"),
        ({"attn": "se", "attn_stages": "34"}, "attn_stages='34': give a list of stages"),
        ({"attn_stages": [3]}, "give attn too"),
    ],
)
def test_bad_attention_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet_tiny", **options)


def test_grid_attention_resnet_concatenates_stage4_with_the_gated_stages():
    model = create_model("attn_resnet_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), capture_attention(model) as maps:
        logits = model(x)
        _, stage2, stage3, stage4 = model.forward_stages(x)
    vector = torch.cat(
        [
            stage4.mean(dim=(2, 3)),
            (maps["attn_layer2"] * stage2).sum(dim=(2, 3)),
            (maps["attn_layer3"] * stage3).sum(dim=(2, 3)),
        ],
        dim=1,
    )
    torch.testing.assert_close(logits, model.fc(vector))


def test_se_and_cbam_variants_are_the_backbone_with_attention():
    assert create_model("cbam_resnet18").layer3[1].attn.__class__.__name__ == "CBAM"
    assert create_model("resnet18", attn="se").layer1[0].attn is not None
    assert create_model("resnet18").layer1[0].attn is None


@pytest.mark.parametrize("attn", ["se", "cbam"])
def test_block_attention_on_chosen_stages_only(attn):
    model = create_model("resnet18", attn=attn, attn_stages=[3, 4])
    with_attention = {f"layer{s}": [b.attn is not None for b in getattr(model, f"layer{s}")] for s in range(1, 5)}
    assert with_attention == {"layer1": [False] * 2, "layer2": [False] * 2, "layer3": [True] * 2, "layer4": [True] * 2}
    # the parameters are the backbone's plus the attention of stages 3 and 4, block by block
    every = create_model("resnet18", attn=attn)
    backbone = sum(p.numel() for p in create_model("resnet18").parameters())
    added = sum(p.numel() for s in (3, 4) for b in getattr(every, f"layer{s}") for p in b.attn.parameters())
    assert sum(p.numel() for p in model.parameters()) == backbone + added
    with capture_attention(model) as maps:
        model(torch.randn(1, 3, 64, 64))
    assert sorted({name.split(".")[0] for name in maps}) == ["layer3", "layer4"]


def test_the_small_stem_keeps_28_px_images_at_full_resolution_into_the_first_stage():
    model = create_model("resnet_tiny", num_classes=10, in_chans=1, stem="small", width=32).eval()
    stages = model.forward_stages(torch.randn(2, 1, 28, 28))
    assert [tuple(s.shape[1:]) for s in stages] == [(32, 28, 28), (64, 14, 14), (128, 7, 7), (256, 4, 4)]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    se = create_model("se_resnet18", num_classes=10, in_chans=1, stem="small", width=16)
    assert se.conv1.kernel_size == (3, 3) and se(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    # odd sides (7 -> 4) agree on both paths of a block, also with local attention's pooled stride
    local = create_model("resnet_tiny", num_classes=10, in_chans=1, stem="small", width=16, attn="local", local_heads=4)
    assert local(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ConfigError, match="stem='tiny'"):
        create_model("resnet_tiny", stem="tiny")


def test_channels_set_each_stage_width_and_keep_the_doubling_by_default():
    small = {"in_chans": 1, "num_classes": 10, "stem": "small", "width": 32}
    doubling = create_model("resnet_tiny", **small)
    capped = create_model("resnet_tiny", **small, channels=[32, 64, 128, 128])
    assert doubling.stage_channels == [32, 64, 128, 256] and capped.stage_channels == [32, 64, 128, 128]
    # the capped last stage: two 3x3 convs and a strided 1x1 shortcut at 128 channels, three norms
    assert sum(p.numel() for p in capped.layer4.parameters()) == 2 * 9 * 128 * 128 + 128 * 128 + 3 * 2 * 128
    assert capped.layer4[0].downsample[0].stride == (2, 2) and capped.fc.in_features == 128
    assert capped(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    gated = create_model("attn_resnet_tiny", **small, channels=[32, 64, 128, 128])
    assert gated.fc.in_features == 128 + 64 + 128  # the grid gates read the capped last stage
    assert create_model("resnet50", num_classes=10, channels=[8, 16, 32, 64]).num_features == 64 * 4  # expanded
    for bad in ([32, 64, 128], [32, 64, 0, 128], "32,64", [32, 64, 128.0, 256], [True, 64, 128, 256]):
        with pytest.raises(ConfigError, match="channels=.*four stages' widths"):
            create_model("resnet_tiny", channels=bad)
