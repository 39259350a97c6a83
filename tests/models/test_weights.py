import logging
import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from attnscope import CheckpointError
from attnscope.models import create_model, read_state_dict
from attnscope.models.weights import adapt_first_conv, apply_state_dict


def randomised_state(name: str, **options) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A model whose every tensor is random, and its state dict: a stand-in for a published file."""
    torch.manual_seed(3)
    model = create_model(name, **options)
    state = {
        key: torch.randn_like(value) if value.is_floating_point() else value
        for key, value in model.state_dict().items()
    }
    state = {key: value.abs() + 0.5 if key.endswith("running_var") else value for key, value in state.items()}
    model.load_state_dict(state)
    return model.eval(), state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", ["resnet_tiny", "attn_vgg_tiny", "se_resnet18"])
def test_a_saved_state_dict_loads_and_reproduces_the_outputs(tmp_path, name, suffix):
    source, state = randomised_state(name, num_classes=5)
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = create_model(name, num_classes=5, pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_a_torchvision_vgg_file_loads_and_its_dense_layers_are_reported_unused(tmp_path, caplog):
    source, state = randomised_state("vgg_tiny", num_classes=1000)
    del state["classifier.weight"], state["classifier.bias"]
    state |= {"classifier.0.weight": torch.randn(64, 128), "classifier.6.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "vgg.pth")
    with caplog.at_level(logging.INFO, logger="attnscope.models.weights"):
        model = create_model("vgg_tiny", num_classes=3, pretrained=tmp_path / "vgg.pth")
    torch.testing.assert_close(model.features[0].weight, source.features[0].weight)
    assert "kept initialised 2 (classifier.weight, classifier.bias)" in caplog.text
    assert "unused from the file 2 (classifier.0.weight, classifier.6.bias)" in caplog.text


def test_another_class_count_replaces_only_the_classifier(tmp_path):
    source, state = randomised_state("resnet_tiny", num_classes=1000)
    torch.save(state, tmp_path / "r.pth")
    torch.manual_seed(0)
    fresh = create_model("resnet_tiny", num_classes=7)
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=7, pretrained=tmp_path / "r.pth")
    torch.testing.assert_close(model.fc.weight, fresh.fc.weight)
    torch.testing.assert_close(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)


def test_attention_modules_keep_their_initialisation_when_loading_a_plain_backbone(tmp_path):
    _, state = randomised_state("resnet18", num_classes=1000)
    report = apply_state_dict(create_model("se_resnet18", num_classes=1000), state, "resnet18.pth")
    assert report.kept_initialised and all(".attn." in key for key in report.kept_initialised)
    assert not report.unused and not report.adapted


def test_grayscale_sums_the_rgb_filters_so_a_gray_image_gives_the_same_logits(tmp_path):
    source, state = randomised_state("resnet_tiny", num_classes=4)
    torch.save(state, tmp_path / "rgb.pth")
    gray_model = create_model("resnet_tiny", num_classes=4, in_chans=1, pretrained=tmp_path / "rgb.pth").eval()
    torch.testing.assert_close(gray_model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    gray = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(gray_model(gray), source(gray.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def test_more_input_channels_repeat_the_filters_cyclically():
    weight = torch.randn(8, 3, 3, 3)
    six = adapt_first_conv(weight, 6)
    torch.testing.assert_close(six.sum(dim=1), weight.sum(dim=1))  # a constant input's response is kept
    five = adapt_first_conv(weight, 5)
    assert five.shape == (8, 5, 3, 3)
    torch.testing.assert_close(five[:, 3:], five[:, :2])
    torch.testing.assert_close(five[:, :3], weight * 3 / 5)


def test_a_missing_backbone_tensor_is_named(tmp_path):
    _, state = randomised_state("resnet_tiny")
    del state["layer2.0.bn1.running_mean"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(
        CheckpointError, match=r"w.pth does not fit resnet_tiny: 'layer2.0.bn1.running_mean' is missing"
    ):
        create_model("resnet_tiny", pretrained=tmp_path / "w.pth")


def test_a_mis_shaped_backbone_tensor_is_named_with_both_shapes(tmp_path):
    _, state = randomised_state("resnet_tiny")
    state["layer3.0.conv1.weight"] = torch.randn(64, 32, 1, 1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(
        CheckpointError, match=r"'layer3.0.conv1.weight' has shape \(64, 32, 1, 1\), the model's \(64, 32, 3, 3\)"
    ):
        create_model("resnet_tiny", pretrained=tmp_path / "w.pth")


def test_checkpoint_wrappers_and_data_parallel_prefixes_are_unwrapped(tmp_path):
    _, state = randomised_state("resnet_tiny")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    assert read_state_dict(tmp_path / "ckpt.pth").keys() == state.keys()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such weight file"),
        (b"not a torch file", "cannot be read as a weights-only state dict"),
        ({"a": 1}, r"entries \['a'\] are not tensors"),
    ],
)
def test_unreadable_files_are_refused_with_the_path(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as error:
        read_state_dict(path)
    assert str(path) in str(error.value)


class Payload:
    """Any non-tensor object: a weights-only load must refuse to build it."""


def test_pickled_objects_are_not_executed(tmp_path):
    torch.save({"weight": torch.ones(1), "object": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(tmp_path / "evil.pth")


def test_published_weights_are_fetched_hash_checked_and_cached(monkeypatch):
    _, state = randomised_state("resnet18", num_classes=1000)
    calls = []

    def fake_hub(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    model = create_model("resnet18", num_classes=1000, pretrained=True)
    torch.testing.assert_close(model.fc.weight, state["fc.weight"])
    url, kwargs = calls[0]
    assert url.endswith("/resnet18-f37072fd.pth")
    assert kwargs["check_hash"] is True and kwargs["weights_only"] is True


def test_no_network_gives_a_clear_way_out(monkeypatch):
    def offline(url, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match=r"cannot fetch .*") as error:
        create_model("attn_vgg16_bn", pretrained=True)
    for way in (
        "download vgg16_bn-6c64b313.pth elsewhere",
        "--model-option pretrained=/path/to/vgg16_bn-6c64b313.pth (attnscope train)",
        "model: {pretrained: /path/to/vgg16_bn-6c64b313.pth} (a run config)",
        "pretrained='/path/to/vgg16_bn-6c64b313.pth' (Python)",
    ):
        assert way in str(error.value)


def test_a_model_without_published_weights_says_so():
    with pytest.raises(CheckpointError, match="attn_vgg_tiny has no published weights"):
        create_model("attn_vgg_tiny", pretrained=True)


def test_agcnn_loads_the_backbone_file_into_both_branches(tmp_path):
    _, state = randomised_state("resnet_tiny", num_classes=1000)
    torch.save(state, tmp_path / "tiny.pth")
    model = create_model("agcnn_tiny", num_classes=14, pretrained=tmp_path / "tiny.pth")
    for branch in (model.global_branch, model.local_branch):
        torch.testing.assert_close(branch.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_an_agcnn_run_s_own_weights_load_whole_as_the_next_stage_s_start(tmp_path):
    """The weights of one AG-CNN stage (every tensor under the model's own names) load as ``pretrained``."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    first = create_model("agcnn_tiny", num_classes=2, stage="global")
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(tmp_path / "best.safetensors"))
    torch.manual_seed(1)
    second = create_model("agcnn_tiny", num_classes=2, stage="local", pretrained=tmp_path / "best.safetensors")
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
