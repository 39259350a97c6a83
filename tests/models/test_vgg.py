import pytest
import torch

from attnscope import capture_attention
from attnscope.models import create_model
from attnscope.models.vgg import VGG16_LAYOUT, last_relu

# torchvision's vgg16_bn: conv, BN, ReLU per conv layer; max-pool indices 6, 13, 23, 33, 43.
TORCHVISION_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def test_vgg16_bn_uses_torchvision_parameter_names():
    keys = set(create_model("vgg16_bn").state_dict())
    expected = {f"features.{i}.{p}" for i in TORCHVISION_CONVS for p in ("weight", "bias")}
    expected |= {
        f"features.{i + 1}.{p}"
        for i in TORCHVISION_CONVS
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert keys == expected | {"classifier.weight", "classifier.bias"}
    assert last_relu(VGG16_LAYOUT) == "features.42"


@pytest.mark.parametrize("name", ["attn_vgg_tiny", "attn_vgg16_bn"])
@pytest.mark.parametrize("normalize", ["softmax", "sigmoid"])
def test_logits_are_the_classifier_over_the_hand_concatenated_vectors(name, normalize):
    model = create_model(name, num_classes=3, normalize=normalize).eval()
    x = torch.randn(2, 3, 48, 48)
    with capture_attention(model) as maps, torch.no_grad():
        logits = model(x)
        _, _, pool3, pool4, pool5 = model.pooled_maps(x)
    pooled = (
        (lambda a, x: (a * x).sum(dim=(2, 3))) if normalize == "softmax" else (lambda a, x: (a * x).mean(dim=(2, 3)))
    )
    vector = torch.cat([pool5.mean(dim=(2, 3)), pooled(maps["pool3"], pool3), pooled(maps["pool4"], pool4)], dim=1)
    torch.testing.assert_close(logits, model.classifier(vector))
    assert maps["pool3"].shape[-2:] == pool3.shape[-2:] and maps["pool4"].shape[-2:] == pool4.shape[-2:]
    if normalize == "softmax":
        torch.testing.assert_close(maps["pool3"].sum(dim=(1, 2, 3)), torch.ones(2))


@pytest.mark.parametrize("size, pool3_size", [(32, 4), (64, 8), (100, 13), (224, 28)])
def test_attn_vgg16_bn_works_at_any_size_from_32_px(size, pool3_size):
    model = create_model("attn_vgg16_bn").eval()
    with capture_attention(model) as maps, torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    assert maps["pool3"].shape == (1, 1, pool3_size, pool3_size)
    assert maps["pool4"].shape[-1] == (pool3_size + 1) // 2


def test_without_attention_pool3_and_pool4_are_average_pooled_into_the_same_classifier():
    model = create_model("attn_vgg16_bn", attention=False, num_classes=4).eval()
    assert model.default_cfg.attention_taps == ()
    assert model.classifier.in_features == create_model("attn_vgg16_bn").classifier.in_features == 1280
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, _, pool3, pool4, pool5 = model.pooled_maps(x)
        expected = model.classifier(torch.cat([p.mean(dim=(2, 3)) for p in (pool5, pool3, pool4)], dim=1))
        torch.testing.assert_close(model(x), expected)


def test_initialisation_follows_the_seed():
    model = create_model("attn_vgg16_bn", num_classes=1000)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    fan_in = model.pool4.global_proj.weight[0].numel()  # 512
    assert model.pool4.global_proj.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert torch.all(model.classifier.bias == 0)


def test_dropout_acts_on_the_concatenated_vector_in_training_only():
    model = create_model("attn_vgg_tiny", dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
