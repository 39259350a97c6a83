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
    "local_resnet50",
    "resnet_tiny",
    "attn_resnet_tiny",
    "agcnn_resnet50",
    "agcnn_tiny",
}
# Forward and backward of every model is run at this size; big models at a small one.
SIZE = 32


def test_lists_every_model_sorted():
    assert list_models() == sorted(EXPECTED)
    assert attnscope.list_models() == list_models()


def test_an_unknown_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet51'; known models: agcnn_resnet50, agcnn_tiny"):
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


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("in_chans, num_classes", [(1, 14), (3, 1), (3, 2)])
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
