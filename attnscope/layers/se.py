"""Squeeze-and-Excitation (Hu et al. 2018).

Global average pooling (or, as an option, max pooling) squeezes each channel to one number; a bottleneck MLP
(reduce by ``rd_ratio``, activate, expand) and a gate turn those numbers into one
weight per channel, which rescales the input. In a ResNet block it sits after
the last batch norm of the residual branch, before the addition.
"""

from __future__ import annotations

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers._utils import LayerSpec, check_positive, make_activation, make_divisible
from attnscope.layers.tap import AttentionTap

POOL_TYPES = ("avg", "max")


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu 2018): one learned gate per channel.

    ``x * gate(fc2(act(fc1(pool_hw(x)))))``, ``pool_hw`` the spatial mean (the paper's squeeze) or max.

    Args:
        channels: input and output channels.
        rd_ratio: reduction ratio of the bottleneck (paper: 1/16).
        rd_channels: bottleneck width; overrides ``rd_ratio`` when given.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        act_layer: activation inside the bottleneck (name, class, module or function).
        gate_layer: the gate (``"sigmoid"``, ``"hard_sigmoid"``, ...).
        pool_type: the squeeze, ``"avg"`` (Hu et al.) or ``"max"`` (the strongest response per
            channel, which CBAM found to add information to the average).

    The gate (B, C) goes through ``self.tap``.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        pool_type: str = "avg",
    ) -> None:
        super().__init__()
        check_positive("channels", channels)
        if pool_type not in POOL_TYPES:
            raise ConfigError(f"SE pool_type={pool_type!r}: use one of {', '.join(POOL_TYPES)}")
        self.pool_type = pool_type
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        check_positive("rd_channels", rd_channels)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = make_activation(act_layer, "act_layer")
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = make_activation(gate_layer, "gate_layer")
        self.tap = AttentionTap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True) if self.pool_type == "avg" else x.amax(dim=(2, 3), keepdim=True)
        weights = self.gate(self.fc2(self.act(self.fc1(squeezed))))
        if self.tap.observed:
            # Passed through the tap only while captured: a module call and two views a step
            # were measurable beside timm's SEModule on small maps.
            weights = self.tap(weights.flatten(1))[:, :, None, None]
        return x * weights
