"""DenseNet under torchvision's names: a state dict in torchvision's layout loads as it is and gives the logits of a
DenseNet computed here, op by op, from the same tensors."""

import re

import pytest
import torch
import torch.nn.functional as F

from attnscope.layers.tap import capture_attention
from attnscope.models import create_model
from attnscope.models.weights import apply_state_dict, load_pretrained

GROWTH, BLOCKS, STEM = 32, (6, 12, 24, 16), 64  # DenseNet-121 (Huang et al. 2017, Table 1)


def torchvision_state_dict(num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of torchvision's densenet121, built from its layout."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def norm(prefix: str, channels: int) -> None:
        state[f"{prefix}.weight"] = torch.rand(channels, generator=generator) + 0.5
        state[f"{prefix}.bias"] = torch.randn(channels, generator=generator) * 0.1
        state[f"{prefix}.running_mean"] = torch.randn(channels, generator=generator) * 0.1
        state[f"{prefix}.running_var"] = torch.rand(channels, generator=generator) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def conv(name: str, out: int, inputs: int, kernel: int) -> None:
        scale = (2 / (inputs * kernel * kernel)) ** 0.5
        state[name] = torch.randn(out, inputs, kernel, kernel, generator=generator) * scale

    conv("features.conv0.weight", STEM, 3, 7)
    norm("features.norm0", STEM)
    channels = STEM
    for block, layers in enumerate(BLOCKS, 1):
        for layer in range(layers):
            prefix = f"features.denseblock{block}.denselayer{layer + 1}"
            norm(f"{prefix}.norm1", channels + layer * GROWTH)
            conv(f"{prefix}.conv1.weight", 4 * GROWTH, channels + layer * GROWTH, 1)
            norm(f"{prefix}.norm2", 4 * GROWTH)
            conv(f"{prefix}.conv2.weight", GROWTH, 4 * GROWTH, 3)
        channels += layers * GROWTH
        if block < len(BLOCKS):
            norm(f"features.transition{block}.norm", channels)
            conv(f"features.transition{block}.conv.weight", channels // 2, channels, 1)
            channels //= 2
    norm("features.norm5", channels)
    state["classifier.weight"] = torch.randn(num_classes, channels, generator=generator) * 0.05
    state["classifier.bias"] = torch.randn(num_classes, generator=generator) * 0.05
    return state


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DenseNet-121's forward pass in eval mode, written out from the paper and torchvision's layout."""

    def norm(h: torch.Tensor, prefix: str) -> torch.Tensor:
        running = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
        return F.batch_norm(h, *running, state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)

    h = F.conv2d(x, state["features.conv0.weight"], stride=2, padding=3)
    h = F.max_pool2d(F.relu(norm(h, "features.norm0")), 3, 2, 1)
    for block, layers in enumerate(BLOCKS, 1):
        features = [h]
        for layer in range(layers):
            prefix = f"features.denseblock{block}.denselayer{layer + 1}"
            new = F.conv2d(F.relu(norm(torch.cat(features, 1), f"{prefix}.norm1")), state[f"{prefix}.conv1.weight"])
            new = F.conv2d(F.relu(norm(new, f"{prefix}.norm2")), state[f"{prefix}.conv2.weight"], padding=1)
            features.append(new)
        h = torch.cat(features, 1)
        if block < len(BLOCKS):
            prefix = f"features.transition{block}"
            h = F.avg_pool2d(F.conv2d(F.relu(norm(h, f"{prefix}.norm")), state[f"{prefix}.conv.weight"]), 2, 2)
    h = F.relu(norm(h, "features.norm5"))
    return F.linear(h.mean(dim=(2, 3)), state["classifier.weight"], state["classifier.bias"])


@pytest.fixture(scope="module")
def state():
    return torchvision_state_dict()


def test_a_torchvision_state_dict_loads_as_it_is_and_gives_the_reference_logits(state):
    model = create_model("densenet121", num_classes=5).eval()
    assert set(model.state_dict()) == set(state)  # the same names, no more, no fewer
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference_logits(state, x))


def test_torchvisions_older_dense_layer_names_are_renamed_on_loading(state, tmp_path):
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value for key, value in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-old.pth")
    model = create_model("densenet121", num_classes=5).eval()
    report = load_pretrained(model, tmp_path / "densenet121-old.pth")
    assert not report.unused and not report.kept_initialised
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference_logits(state, x))


def test_attention_variants_load_the_backbone_and_keep_their_attention_initialised(state):
    se = create_model("se_densenet121", num_classes=5)
    report = apply_state_dict(se, state, "torchvision densenet121")
    assert sorted({key.split(".")[1] for key in report.kept_initialised if key.startswith("features.attn")}) == [
        "attn1", "attn2", "attn3", "attn4",
    ]  # fmt: skip
    assert set(report.loaded) >= {key for key in state if not key.endswith("num_batches_tracked")}
    grid = create_model("attn_densenet121", num_classes=5).eval()
    apply_state_dict(grid, state, "torchvision densenet121")
    with capture_attention(grid) as maps, torch.no_grad():
        grid(torch.randn(1, 3, 128, 128))
    assert {name: tuple(m.shape[-2:]) for name, m in maps.items()} == {"attn_block2": (8, 8), "attn_block3": (4, 4)}


def test_grayscale_radiographs_sum_the_rgb_filters_of_the_first_convolution(state):
    grey = create_model("densenet121", num_classes=5, in_chans=1).eval()
    apply_state_dict(grey, state, "torchvision densenet121")
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(image), reference_logits(state, image.expand(1, 3, 64, 64)), atol=1e-5)
