"""VGG16-BN without dense layers, and the attention VGG of "Learn to Pay Attention" / AttnMel.

The feature layers are torchvision's, in the same order and under the same names
(``features.<i>``), so a torchvision ``vgg16_bn`` state dict loads without renaming.
Max-pooling uses ``ceil_mode`` so that any input from 1 px up keeps a pool-5 map
(identical to torchvision's at even sizes such as 224).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.grid import GridAttention, Normalize
from attnscope.models.base import AttnClassifier, ModelConfig, make_head_pool
from attnscope.models.registry import register_class

Layout = Sequence[int | str]
VGG16_LAYOUT: Layout = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TINY_LAYOUT: Layout = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M")
VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
VGG_PAPER = "Simonyan & Zisserman 2015, VGG; without dense layers as in Jetley et al. 2018"
ATTN_VGG_PAPER = "Jetley et al. 2018, Learn to Pay Attention; Yan et al. 2019, AttnMel"


def make_features(layout: Layout, in_chans: int) -> nn.Sequential:
    """torchvision's VGG feature stack with batch norm: conv3x3, BN, ReLU per number; max-pool per 'M'."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [
                nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
    return nn.Sequential(*layers)


def last_relu(layout: Layout) -> str:
    """Name of the last ReLU of the feature stack: the default Grad-CAM layer."""
    modules = sum(1 if item == "M" else 3 for item in layout)
    trailing_pool = 1 if layout[-1] == "M" else 0
    return f"features.{modules - 1 - trailing_pool}"


def init_vgg(model: nn.Module) -> None:
    """torchvision's VGG initialisation for the features; N(0, 0.01) for linear layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


class VGG(AttnClassifier):
    """VGG features, global average pooling, one linear classifier."""

    def __init__(
        self, layout: Layout, num_classes: int, in_chans: int, dropout: float = 0.0, head: str = "avg"
    ) -> None:
        super().__init__()
        self.features = make_features(layout, in_chans)
        self.num_features = [int(item) for item in layout if item != "M"][-1]
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_vgg(self)
        self.head_pool = make_head_pool(head, self.num_features)

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.global_pool(features), features


class AttnVGG(AttnClassifier):
    """VGG with grid attention on pool-3 and pool-4, both guided by pool-5.

    The classifier reads ``[avgpool(pool5), gate3(pool3, pool5), gate4(pool4, pool5)]``
    (512 + 256 + 512 for VGG16). The gates are ``self.pool3`` and ``self.pool4``, so
    their maps are captured as ``pool3`` and ``pool4``. ``attention=False`` replaces
    them by average pooling of pool-3 and pool-4 (same classifier width): the ablation.
    """

    def __init__(
        self,
        layout: Layout,
        num_classes: int,
        in_chans: int,
        normalize: Normalize = "softmax",
        dropout: float = 0.0,
        attention: bool = True,
        attn_channels: int | None = None,
        head: str = "avg",
    ) -> None:
        super().__init__()
        self.features = make_features(layout, in_chans)
        self.pool_indices = [i for i, module in enumerate(self.features) if isinstance(module, nn.MaxPool2d)]
        if len(self.pool_indices) != 5:
            raise ConfigError(f"an attention VGG needs five pooling stages, the layout has {len(self.pool_indices)}")
        widths = [layout[i - 1] for i, item in enumerate(layout) if item == "M"]  # channels at each pool
        local3, local4, global5 = (int(width) for width in widths[2:])
        self.attention = attention
        if attention:
            self.pool3 = GridAttention(local3, global5, attn_channels, normalize=normalize)
            self.pool4 = GridAttention(local4, global5, attn_channels, normalize=normalize)
        self.num_features = global5 + local3 + local4
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_vgg(self)
        if attention:
            for gate in (self.pool3, self.pool4):
                for module in gate.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                        if module.bias is not None:
                            nn.init.zeros_(module.bias)
        self.head_pool = make_head_pool(head, global5)

    def pooled_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the five max-pooling layers: pool-1 ... pool-5."""
        outputs = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.pool_indices:
                outputs.append(x)
        return outputs

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, pool3, pool4, pool5 = self.pooled_maps(x)
        global_vector = self.global_pool(pool5)
        if self.attention:
            vector3, vector4 = self.pool3(pool3, pool5), self.pool4(pool4, pool5)
        else:
            vector3, vector4 = pool3.mean(dim=(2, 3)), pool4.mean(dim=(2, 3))
        return torch.cat([global_vector, vector3, vector4], dim=1), pool5


def _register(
    name: str,
    layout: Layout,
    paper: str,
    attention: bool,
    url: str = "",
    input_size: tuple[int, int, int] = (3, 224, 224),
) -> None:
    """Register one VGG: a layout, with or without grid attention, and its config."""
    config = ModelConfig(
        name,
        paper,
        input_size=input_size,
        first_conv="features.0",
        classifier="classifier",
        cam_target_layer=last_relu(layout),
        url=url,
    )
    register_class(config, AttnVGG if attention else VGG, fixed={"layout": layout})


_register("vgg16_bn", VGG16_LAYOUT, VGG_PAPER, attention=False, url=VGG16_BN_URL)
_register("attn_vgg16_bn", VGG16_LAYOUT, ATTN_VGG_PAPER, attention=True, url=VGG16_BN_URL)
_register("vgg_tiny", TINY_LAYOUT, "small VGG for CPUs and tests", attention=False, input_size=(3, 64, 64))
_register(
    "attn_vgg_tiny", TINY_LAYOUT, "small attention VGG for CPUs and tests", attention=True, input_size=(3, 64, 64)
)
