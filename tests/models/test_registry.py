import pytest
import torch

import attnscope
from attnscope import ConfigError, capture_attention
from attnscope.models import create_model, list_models

EXPECTED = {
    "vgg16_bn",
    "attn_vgg16_bn",
    "vgg_tiny",
    "attn_vgg_tiny",
    "resnet18",
    "resnet34",
    "resnet50",
    "se_resnet18",
    "se_resnet34",
    "se_resnet50",
    "cbam_resnet18",
    "cbam_resnet34",
    "cbam_resnet50",
    "attn_resnet18",
    "attn_resnet34",
    "attn_resnet50",
    "local_resnet26",
    "local_resnet38",
    "local_resnet50",
    "resnet101",
    "se_resnet101",
    "cbam_resnet101",
    "attn_resnet101",
    "resnet_tiny",
    "attn_resnet_tiny",
    "agcnn_resnet50",
    "agcnn_tiny",
    "densenet121",
    "densenet169",
    "se_densenet121",
    "cbam_densenet121",
    "attn_densenet121",
    "agcnn_densenet121",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
}
# Forward and backward of every model is run at this size; big models at a small one.
SIZE = 32
# the deeper ResNets repeat the blocks of resnet50 and local_resnet50: one input shape is enough for them
DEEPER = {"resnet101", "se_resnet101", "cbam_resnet101", "attn_resnet101", "local_resnet38"}
DEEPER |= {"densenet169", "se_densenet121", "cbam_densenet121", "attn_densenet121", "agcnn_densenet121"}
DEEPER |= {"vit_small_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224"}  # vit_tiny's blocks again
SHAPES = [(1, 14), (3, 1), (3, 2)]


def test_lists_every_model_sorted():
    assert list_models() == sorted(EXPECTED)
    assert attnscope.list_models() == list_models()


def test_an_unknown_name_is_a_value_error_listing_the_known_ones():
    known = "known models: agcnn_densenet121, agcnn_resnet50, agcnn_tiny"
    with pytest.raises(ValueError, match=f"unknown model .resnet51.; {known}"):
        create_model("resnet51")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalise": "softmax"}, r"no option\(s\) \['normalise'\].*normalize"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"in_chans": -1}, "in_chans must be a positive integer"),
        ({"pretrained": 3}, "pretrained must be False, True or a path"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("attn_vgg_tiny", **kwargs)


def model_shapes():
    """Every model with each input shape; ``make check`` trains each shallow model on one shape, and the
    deeper ones (0.4-1.2 s each) only in the whole suite."""
    for name in sorted(EXPECTED):
        for index, shape in enumerate(SHAPES[-1:] if name in DEEPER else SHAPES):
            quick = index == 0 and name not in DEEPER and not name.endswith(("50", "101"))
            yield pytest.param(name, *shape, marks=() if quick else pytest.mark.slow)


@pytest.mark.parametrize("name, in_chans, num_classes", list(model_shapes()))
def test_every_model_trains_on_a_tiny_input(name, in_chans, num_classes):
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    config = model.default_cfg
    assert config.name == name and config.input_size[0] == in_chans and len(config.mean) == in_chans
    model.get_submodule(config.cam_target_layer)  # the Grad-CAM default exists
    with capture_attention(model) as maps:
        logits = model(torch.randn(2, in_chans, SIZE, SIZE))
    assert logits.shape == (2, num_classes)
    assert set(maps) == set(config.attention_taps)
    logits.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for parameter_name, parameter in trainable:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name


def test_grayscale_configs_average_the_rgb_statistics():
    config = create_model("resnet_tiny", in_chans=1).default_cfg
    assert config.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert config.input_size == (1, 64, 64)


# Every option of each family, written out from the classes' documented signatures: every variant of
# a family takes all of them (the grid-attention ResNets once lacked global_heads and the local ones).
RESNET_OPTIONS = {
    "width",
    "channels",
    "attn",
    "attn_kwargs",
    "attn_stages",
    "global_attn",
    "global_heads",
    "local_kernel",
    "local_heads",
    "dropout",
    "zero_init_residual",
    "stem",
    "head",
}
FAMILY_OPTIONS = {
    "resnet": RESNET_OPTIONS,
    "attn_resnet": RESNET_OPTIONS | {"normalize", "attn_channels"},
    "vgg": {"dropout", "head"},
    "attn_vgg": {"normalize", "dropout", "attention", "attn_channels", "head"},
    "agcnn": {"backbone", "tau", "stage", "backbone_options"},
    "densenet": {"bn_size", "attn", "attn_kwargs", "dropout", "head"},
    "attn_densenet": {"bn_size", "attn", "attn_kwargs", "dropout", "head", "normalize", "attn_channels"},
    "vit": {
        "embed_dim",
        "depth",
        "num_heads",
        "patch_size",
        "mlp_ratio",
        "qkv_bias",
        "attention_taps",
        "dropout",
        "pos_grid",
    },
}


def family(name: str) -> str:
    if name.startswith("agcnn"):
        return "agcnn"
    if name.startswith("attn_resnet"):
        return "attn_resnet"
    if name.startswith("attn_vgg"):
        return "attn_vgg"
    if name.startswith(("vit_", "deit_")):
        return "vit"
    if "densenet" in name:
        return "attn_densenet" if name.startswith("attn_") else "densenet"
    return "vgg" if name.startswith("vgg") else "resnet"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variant_takes_every_option_of_its_family(name):
    from attnscope.models import model_entry

    assert set(model_entry(name).options()) == FAMILY_OPTIONS[family(name)]


def test_options_a_variant_once_lacked_now_build_and_take_effect():
    model = create_model(
        "attn_resnet_tiny", attn="local", local_kernel=3, local_heads=2, global_attn=[4], global_heads=2, stem="small"
    )
    conv = model.layer1[0].conv1
    assert type(conv).__name__ == "LocalSelfAttention" and conv.kernel_size == 3 and conv.heads == 2
    assert model.global_attn["layer4"].heads == 2
    assert create_model("resnet_tiny").layer1[0].conv1.out_channels == 16  # the tiny variant's own width
    assert create_model("resnet_tiny", width=8).layer1[0].conv1.out_channels == 8
    assert type(create_model("se_resnet18").layer1[0].attn).__name__ == "SqueezeExcite"
    refused = r"model 'vgg_tiny' has no option\(s\) \['attention'\]; its options are: dropout, head"
    with pytest.raises(ConfigError, match=refused):
        create_model("vgg_tiny", attention=False)
