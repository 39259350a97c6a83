"""ResNets with pluggable attention, under torchvision's parameter names.

- ``attn="se"`` / ``"cbam"``: the attention module sits in every block after the
  last batch norm of the residual branch, before the addition (Hu et al. 2018),
  as ``layerX.Y.attn``; ``attn_stages`` keeps it to chosen stages (and the same
  for ``attn="local"``).
- ``attn="local"``: every 3x3 convolution of the blocks becomes a
  ``LocalSelfAttention`` (Ramachandran et al. 2019); the stem convolution stays.
- ``global_attn``: a ``GlobalSelfAttention`` block after the chosen stages, as
  ``global_attn.layerX``.
- ``AttnResNet``: grid attention on the outputs of stages 2 and 3, guided by stage 4.

Blocks follow torchvision (v1.5: the stride sits on the 3x3 convolution), so a
torchvision ResNet state dict loads into the backbone as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.global_attention import GlobalSelfAttention
from attnscope.layers.grid import GridAttention, Normalize
from attnscope.layers.local_attention import LocalSelfAttention
from attnscope.layers.registry import create_attn
from attnscope.models.base import AttnClassifier, ModelConfig, make_head_pool
from attnscope.models.registry import register_class

BLOCK_ATTENTION = ("se", "cbam", "attn_pool")
LOCAL = "local"
DEFAULT_GLOBAL_STAGES = (3, 4)
RESNET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


class BlockOptions:
    """How blocks are built: which attention they hold and how local attention is set."""

    def __init__(self, attn: str | None, attn_kwargs: dict | None, local_kernel: int, local_heads: int) -> None:
        if attn is not None and attn not in (*BLOCK_ATTENTION, LOCAL):
            raise ConfigError(
                f"attn={attn!r} cannot sit inside a ResNet block; use one of {[*BLOCK_ATTENTION, LOCAL]} "
                "(grid attention: the attn_resnet models; global attention: global_attn=...)"
            )
        self.attn = attn
        self.attn_kwargs = dict(attn_kwargs or {})
        self.local_kernel = local_kernel
        self.local_heads = local_heads

    def spatial(self, in_channels: int, out_channels: int, stride: int) -> nn.Module:
        """A 3x3 convolution, or local self-attention in its place."""
        if self.attn == LOCAL:
            return LocalSelfAttention(
                in_channels, out_channels, kernel_size=self.local_kernel, heads=self.local_heads, stride=stride
            )
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)

    def block_attention(self, channels: int) -> nn.Module | None:
        if self.attn in BLOCK_ATTENTION:
            return create_attn(self.attn, channels, **self.attn_kwargs)
        return None


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, options: BlockOptions
    ) -> None:
        super().__init__()
        self.conv1 = options.spatial(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = options.spatial(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = options.block_attention(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, options: BlockOptions
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = options.spatial(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.attn = options.block_attention(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


def stage_numbers(option: str, values: Sequence[int]) -> tuple[int, ...]:
    """``values`` as sorted stage numbers 1-4; anything else is a ConfigError naming ``option``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{option}={values!r}: give a list of stages numbered 1 to 4, e.g. [3, 4]")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4 for s in values):
        raise ConfigError(f"{option}={list(values)!r}: stages are numbered 1 to 4")
    return tuple(sorted(set(values)))


def stage_planes(width: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    """The four stages' widths (before a bottleneck's expansion): ``channels`` as given (timm's
    option of that name), or ``width`` doubling from stage to stage."""
    if channels is None:
        return tuple(width * 2**index for index in range(4))
    if (
        isinstance(channels, (str, bytes))
        or not isinstance(channels, Sequence)
        or len(channels) != 4
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    ):
        raise ConfigError(
            f"channels={channels!r}: give the four stages' widths as positive whole numbers, "
            "e.g. [32, 64, 128, 128] (leave it out for width, 2x, 4x, 8x width)"
        )
    return tuple(channels)


def global_stages(global_attn: bool | Sequence[int] | None) -> tuple[int, ...]:
    """The stages (1-4) after which a global self-attention block is added."""
    if global_attn is True:
        return DEFAULT_GLOBAL_STAGES
    if not global_attn:
        return ()
    return stage_numbers("global_attn", global_attn)


class ResNet(AttnClassifier):
    """ResNet with optional attention in its blocks and global attention after stages."""

    classifier_name = "fc"

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int,
        in_chans: int,
        width: int = 64,
        channels: Sequence[int] | None = None,
        attn: str | None = None,
        attn_kwargs: dict | None = None,
        attn_stages: Sequence[int] | None = None,
        global_attn: bool | Sequence[int] = False,
        global_heads: int = 8,
        local_kernel: int = 7,
        local_heads: int = 8,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        stem: str = "imagenet",
        head: str = "avg",
    ) -> None:
        super().__init__()
        options = BlockOptions(attn, attn_kwargs, local_kernel, local_heads)
        if attn_stages is not None and attn is None:
            raise ConfigError("attn_stages chooses where the block attention goes: give attn too (se, cbam or local)")
        with_attention = stage_numbers("attn_stages", attn_stages) if attn_stages is not None else (1, 2, 3, 4)
        self.inplanes = width
        self.conv1, self.maxpool = self._make_stem(in_chans, width, stem)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.stage_channels = []
        for index, (blocks, planes) in enumerate(zip(layers, stage_planes(width, channels), strict=True), start=1):
            chosen = options if index in with_attention else BlockOptions(None, None, local_kernel, local_heads)
            stage = self._make_stage(block, planes, blocks, 1 if index == 1 else 2, chosen)
            setattr(self, f"layer{index}", stage)
            self.stage_channels.append(self.inplanes)
        self.global_attn = nn.ModuleDict(
            {
                f"layer{s}": GlobalSelfAttention(self.stage_channels[s - 1], heads=global_heads)
                for s in global_stages(global_attn)
            }
        )
        self.num_features = self.stage_channels[-1]
        self.head_dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)
        self.head_pool = make_head_pool(head, self.num_features)

    @staticmethod
    def _make_stem(in_chans: int, width: int, stem: str) -> tuple[nn.Conv2d, nn.Module]:
        """The first convolution and what follows it: 7x7/2 and a max pool, or 3x3/1 and nothing."""
        if stem not in STEMS:
            raise ConfigError(
                f"stem={stem!r}: use 'imagenet' (7x7/2 conv and max pool, 4x smaller) or "
                "'small' (3x3/1 conv, no pool: for 28-64 px images such as Fashion-MNIST)"
            )
        if stem == "small":
            return nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False), nn.Identity()
        conv = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        return conv, nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _make_stage(self, block: Block, planes: int, blocks: int, stride: int, options: BlockOptions) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample, options)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, 1, None, options) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels > 1:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, LocalSelfAttention):
                module.reset_parameters()
            if zero_init_residual and isinstance(module, (BasicBlock, Bottleneck)):
                last_bn = module.bn3 if isinstance(module, Bottleneck) else module.bn2
                nn.init.zeros_(last_bn.weight)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four stages (after their global attention block, where there is one)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            if f"layer{index}" in self.global_attn:
                x = self.global_attn[f"layer{index}"](x)
            outputs.append(x)
        return outputs

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = self.forward_stages(x)[-1]
        return self.global_pool(last), last


class AttnResNet(ResNet):
    """ResNet with grid attention: gates on stages 2 and 3, guided by stage 4.

    The classifier reads ``[avgpool(stage4), gate2(stage2, stage4), gate3(stage3, stage4)]``;
    the gates' maps are captured as ``attn_layer2`` and ``attn_layer3``.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int,
        in_chans: int,
        normalize: Normalize = "softmax",
        attn_channels: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(block, layers, num_classes, in_chans, **options)
        channels2, channels3, channels4 = self.stage_channels[1:]
        self.attn_layer2 = GridAttention(channels2, channels4, attn_channels, normalize=normalize)
        self.attn_layer3 = GridAttention(channels3, channels4, attn_channels, normalize=normalize)
        self.num_features = channels4 + channels2 + channels3
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, stage2, stage3, stage4 = self.forward_stages(x)
        vectors = [self.global_pool(stage4), self.attn_layer2(stage2, stage4), self.attn_layer3(stage3, stage4)]
        return torch.cat(vectors, dim=1), stage4


ARCHITECTURES: dict[str, tuple[Block, tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet26": (Bottleneck, (1, 2, 4, 1)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet38": (Bottleneck, (2, 3, 5, 2)),  # Ramachandran et al. 2019's ResNet-38
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet_tiny": (BasicBlock, (1, 1, 1, 1)),
}
TINY_WIDTH = 16
STEMS = ("imagenet", "small")
PAPERS = {
    None: "He et al. 2016, ResNet",
    "se": "Hu et al. 2018, Squeeze-and-Excitation Networks",
    "cbam": "Woo et al. 2018, CBAM",
    "local": "Ramachandran et al. 2019, Stand-Alone Self-Attention (stem convolution kept)",
    "grid": "Jetley et al. 2018 grid attention on a ResNet backbone",
}


def _register(name: str, architecture: str, attn: str | None = None, grid: bool = False) -> None:
    """Register one ResNet variant: a backbone, an attention kind, a config.

    Every variant takes every option of its class (:class:`ResNet`, and for grid
    attention :class:`AttnResNet` on top), so no variant lacks one its family has.
    """
    block, layers = ARCHITECTURES[architecture]
    config = ModelConfig(
        name,
        PAPERS["grid" if grid else attn],
        input_size=(3, 64, 64) if architecture == "resnet_tiny" else (3, 224, 224),
        first_conv="conv1",
        classifier="fc",
        cam_target_layer="layer4",
        # Local attention replaces every 3x3 conv: a ResNet file would fill only the stem,
        # the 1x1 convs and the norms, so no published file is offered (a path still loads).
        url="" if attn == LOCAL else RESNET_URLS.get(architecture, ""),
    )
    defaults: dict[str, object] = {"attn": attn} if attn else {}
    if architecture == "resnet_tiny":
        defaults["width"] = TINY_WIDTH
    register_class(config, AttnResNet if grid else ResNet, fixed={"block": block, "layers": layers}, defaults=defaults)


for _depth in ("resnet18", "resnet34", "resnet50", "resnet101"):
    _register(_depth, _depth)
    _register(f"se_{_depth}", _depth, attn="se")
    _register(f"cbam_{_depth}", _depth, attn="cbam")
    _register(f"attn_{_depth}", _depth, grid=True)
_register("local_resnet26", "resnet26", attn="local")
_register("local_resnet38", "resnet38", attn="local")
_register("local_resnet50", "resnet50", attn="local")
_register("resnet_tiny", "resnet_tiny")
_register("attn_resnet_tiny", "resnet_tiny", grid=True)
