"""DenseNets (Huang et al. 2017) with pluggable attention, under torchvision's parameter names.

DenseNet-121 is the backbone radiology starts from: CheXNet (Rajpurkar et al.
2017) and the second backbone of AG-CNN (Guan et al. 2018). The layers, their order
and their names follow torchvision (``features.denseblock1.denselayer1.norm1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``), so a
torchvision state dict loads as it is; the dense layers' older names of
torchvision's published files (``norm.1``, ``conv.2``) are renamed on loading.

- ``attn="se"`` / ``"cbam"``: an attention module after each transition and after
  the last dense block (``features.attn1`` ... ``features.attn4``), where a
  ResNet's sits at the end of each stage; the backbone's tensors keep their names.
- ``attn_densenet121``: grid attention (Jetley et al. 2018) on the outputs of the
  second and third transitions, guided by the last feature map, as ``attn_block2``
  and ``attn_block3``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.grid import GridAttention, Normalize
from attnscope.layers.registry import create_attn
from attnscope.models.base import AttnClassifier, ModelConfig, make_head_pool
from attnscope.models.registry import register_class

BLOCK_ATTENTION = ("se", "cbam")
ARCHITECTURES = {  # growth rate, layers per dense block, channels of the stem
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet169": (32, (6, 12, 32, 32), 64),
}
DENSENET_URLS = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
}
# torchvision's published files name a dense layer's modules "norm.1", "conv.2": the names of before 0.4
OLD_LAYER_NAME = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class DenseLayer(nn.Module):
    """Batch norm, ReLU, 1x1 convolution to ``bn_size * growth`` channels, then the same and a 3x3 convolution to
    ``growth`` new channels, read from every earlier layer's output of its block."""

    def __init__(self, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(earlier, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    """``layers`` dense layers; the output is the input and every layer's new channels, concatenated."""

    def __init__(self, layers: int, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__(
            {f"denselayer{i + 1}": DenseLayer(in_channels + i * growth, growth, bn_size) for i in range(layers)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Batch norm, ReLU, 1x1 convolution halving the channels, 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_channels),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False),
                pool=nn.AvgPool2d(kernel_size=2, stride=2),
            )
        )


class DenseNet(AttnClassifier):
    """DenseNet with optional channel/spatial attention after its transitions and its last block."""

    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        num_classes: int,
        in_chans: int,
        bn_size: int = 4,
        attn: str | None = None,
        attn_kwargs: dict | None = None,
        dropout: float = 0.0,
        head: str = "avg",
    ) -> None:
        super().__init__()
        if attn is not None and attn not in BLOCK_ATTENTION:
            raise ConfigError(
                f"attn={attn!r} cannot sit in a DenseNet; use one of {list(BLOCK_ATTENTION)} "
                "(grid attention: the attn_densenet models)"
            )
        modules: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        channels, self.stage_channels, self._stage_ends = num_init_features, [], []
        for index, layers in enumerate(block_config, start=1):
            modules[f"denseblock{index}"] = DenseBlock(layers, channels, growth_rate, bn_size)
            channels += layers * growth_rate
            if index < len(block_config):
                modules[f"transition{index}"] = Transition(channels, channels // 2)
                channels //= 2
            else:
                modules["norm5"] = nn.BatchNorm2d(channels)
            if attn is not None:
                modules[f"attn{index}"] = create_attn(attn, channels, **dict(attn_kwargs or {}))
            self.stage_channels.append(channels)
            self._stage_ends.append(next(reversed(modules)))
        self.features = nn.Sequential(modules)
        self.num_features = channels
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()
        self.head_pool = make_head_pool(head, channels)

    def _init_weights(self) -> None:
        """torchvision's: He-normal convolutions, unit batch norms, zero biases of the classifier."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @staticmethod
    def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict with torchvision's older dense-layer names (``norm.1``) renamed to today's (``norm1``)."""
        renamed = {}
        for key, value in state.items():
            old = OLD_LAYER_NAME.match(key)
            renamed[old.group(1) + old.group(2) if old else key] = value
        return renamed

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each dense block with its transition (and attention); the last after its norm and ReLU."""
        outputs = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._stage_ends:
                outputs.append(x)
        outputs[-1] = F.relu(outputs[-1])
        return outputs

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = F.relu(self.features(x))
        return self.global_pool(last), last


class AttnDenseNet(DenseNet):
    """DenseNet with grid attention: gates on the outputs of transitions 2 and 3, guided by the last feature map.

    The classifier reads ``[avgpool(last), gate2(block2, last), gate3(block3, last)]``; the gates' maps are
    captured as ``attn_block2`` and ``attn_block3``.
    """

    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        num_classes: int,
        in_chans: int,
        normalize: Normalize = "softmax",
        attn_channels: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(growth_rate, block_config, num_init_features, num_classes, in_chans, **options)
        channels2, channels3, last = self.stage_channels[1], self.stage_channels[2], self.stage_channels[-1]
        self.attn_block2 = GridAttention(channels2, last, attn_channels, normalize=normalize)
        self.attn_block3 = GridAttention(channels3, last, attn_channels, normalize=normalize)
        self.num_features = last + channels2 + channels3
        self.classifier = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.classifier.bias)

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, block2, block3, last = self.forward_stages(x)
        vectors = [self.global_pool(last), self.attn_block2(block2, last), self.attn_block3(block3, last)]
        return torch.cat(vectors, dim=1), last


PAPERS = {
    None: "Huang et al. 2017, Densely Connected Convolutional Networks",
    "se": "Hu et al. 2018, Squeeze-and-Excitation, after each DenseNet transition",
    "cbam": "Woo et al. 2018, CBAM, after each DenseNet transition",
    "grid": "Jetley et al. 2018 grid attention on a DenseNet backbone",
}


def _register(name: str, architecture: str, attn: str | None = None, grid: bool = False) -> None:
    growth, blocks, stem = ARCHITECTURES[architecture]
    config = ModelConfig(
        name,
        PAPERS["grid" if grid else attn],
        first_conv="features.conv0",
        classifier="classifier",
        cam_target_layer="features.norm5",
        url=DENSENET_URLS[architecture],
    )
    fixed = {"growth_rate": growth, "block_config": blocks, "num_init_features": stem}
    register_class(config, AttnDenseNet if grid else DenseNet, fixed=fixed, defaults={"attn": attn} if attn else {})


for _depth in ARCHITECTURES:
    _register(_depth, _depth)
_register("se_densenet121", "densenet121", attn="se")
_register("cbam_densenet121", "densenet121", attn="cbam")
_register("attn_densenet121", "densenet121", grid=True)
