"""CBAM, the Convolutional Block Attention Module (Woo et al. 2018).

A channel gate (average- and max-pooled descriptors through one shared MLP,
summed, gated) and a spatial gate (channel-wise mean and max maps, concatenated,
a k x k convolution, gated), applied one after the other or in parallel. Each
gate is a module of its own, usable alone, with its own tap.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers._utils import LayerSpec, check_positive, make_activation, make_divisible
from attnscope.layers.tap import AttentionTap

Order = Literal["channel_first", "spatial_first", "parallel"]
ORDERS = ("channel_first", "spatial_first", "parallel")


class ChannelGate(nn.Module):
    """CBAM's channel attention; the gate (B, C) goes through ``self.tap``.

    Unlike SE it also pools by maximum: ``gate(mlp(avg(x)) + mlp(max(x)))``.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        mlp_bias: bool = False,
    ) -> None:
        super().__init__()
        check_positive("channels", channels)
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        check_positive("rd_channels", rd_channels)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=mlp_bias)
        self.act = make_activation(act_layer, "act_layer")
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=mlp_bias)
        self.gate = make_activation(gate_layer, "gate_layer")
        self.tap = AttentionTap()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate of ``x``, (B, C), passed through the tap."""
        batch = x.shape[0]
        # One MLP call for both descriptors: they share its weights.
        descriptors = torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)])
        mlp_out = self.fc2(self.act(self.fc1(descriptors)))
        gate = self.gate(mlp_out[:batch] + mlp_out[batch:])
        return self.tap(gate.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM's spatial attention; the gate (B, 1, H, W) goes through ``self.tap``.

    ``gate(bn(conv_kxk([mean_c(x), max_c(x)])))``; the batch norm follows the
    authors' code and can be turned off with ``norm=False``.
    """

    def __init__(self, kernel_size: int = 7, gate_layer: LayerSpec = "sigmoid", norm: bool = True) -> None:
        super().__init__()
        check_positive("spatial_kernel", kernel_size)
        if kernel_size % 2 == 0:
            raise ConfigError(f"spatial_kernel must be odd so the map keeps its size, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.gate = make_activation(gate_layer, "gate_layer")
        self.tap = AttentionTap()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate of ``x``, (B, 1, H, W), passed through the tap."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.tap(self.gate(self.norm(self.conv(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class CBAM(nn.Module):
    """CBAM (Woo 2018): a channel gate and a spatial gate, in the chosen ``order``.

    ``channel_first`` is the paper's choice; ``spatial_first`` swaps them;
    ``parallel`` computes both gates from the same input and applies their product.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        spatial_kernel: int = 7,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        order: Order = "channel_first",
    ) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ConfigError(f"order={order!r} is not valid; use one of {list(ORDERS)}")
        self.order = order
        self.channel_gate = ChannelGate(
            channels, rd_ratio, rd_channels, rd_divisor, act_layer=act_layer, gate_layer=gate_layer
        )
        self.spatial_gate = SpatialGate(spatial_kernel, gate_layer=gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "channel_first":
            return self.spatial_gate(self.channel_gate(x))
        if self.order == "spatial_first":
            return self.channel_gate(self.spatial_gate(x))
        return x * self.channel_gate.weights(x)[:, :, None, None] * self.spatial_gate.weights(x)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"
