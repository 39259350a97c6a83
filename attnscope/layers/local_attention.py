"""Stand-alone local self-attention (Ramachandran et al. 2019, "SASA").

Every pixel attends to the k x k neighbourhood around it: per head, the scaled
dot product of its query with each neighbour's key, plus a relative position
term (half the head's channels score the row offset, half the column offset),
softmax over the neighbourhood, weighted sum of the neighbours' values.
Neighbours outside the image are left out of the softmax, not attended as zeros.

The computation itself lives in :mod:`attnscope.layers.neighbourhood`, in three
formulations that agree within 1e-5 (a reference, a shifted-view kernel with a
hand-written backward, and dense masked attention for small maps); ``implementation``
picks one, ``auto`` the fastest measured for the map's size.

Memory. The textbook implementation unfolds keys and values to
(B, C, k*k, H, W) each, and autograd keeps both for the backward pass: k*k
times the memory of the feature map, twice. The shifted formulations read each
neighbour as a shifted *view* of the zero-padded keys and values, so what autograd
keeps is the queries, the padded keys and values, and the (B, heads, k*k, H, W)
attention weights: about ``3 C + 2 heads k^2`` numbers a pixel instead of ``2 C k^2``.
The dense one keeps (B, heads, H*W, H*W) weights, at most ``2 heads k^2`` a pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.neighbourhood import (
    attention_received,
    check_implementation,
    local_attention,
    neighbourhood_attention,
    neighbourhood_mask,
)
from attnscope.layers.tap import AttentionTap

__all__ = ["LocalSelfAttention", "attention_received", "neighbourhood_attention", "neighbourhood_mask"]


class LocalSelfAttention(nn.Module):
    """Stand-alone self-attention (SASA): multi-head attention over each pixel's k x k neighbourhood.

    A drop-in replacement for a k x k convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``); must divide into
            ``heads`` heads of an even width.
        kernel_size: neighbourhood size k (odd).
        heads: attention heads.
        stride: the output is average-pooled by this factor, as in the paper.
        qkv_bias: bias in the query/key/value projections.
        implementation: ``auto`` (default), ``shifted``, ``dense`` or ``reference``: how the
            attention is computed (:mod:`attnscope.layers.neighbourhood`); all give the same numbers.

    While captured, the attention each position receives, averaged over queries,
    (B, heads, H, W), goes through ``self.tap``; it is not computed otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 7,
        heads: int = 8,
        stride: int = 1,
        qkv_bias: bool = False,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for option, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("heads", heads),
            ("stride", stride),
        ):
            check_positive(option, value)
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd so that each pixel is the centre, got {kernel_size}")
        if out_channels % heads or (out_channels // heads) % 2:
            raise ConfigError(
                f"out_channels={out_channels} must split into heads={heads} heads of an even width "
                "(half of each head scores row offsets, half column offsets); change out_channels or heads"
            )
        check_implementation(implementation)
        self.implementation = implementation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.heads = heads
        self.stride = stride
        self.head_dim = out_channels // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1, bias=qkv_bias)
        self.rel_rows = nn.Parameter(torch.empty(kernel_size, self.head_dim // 2))
        self.rel_cols = nn.Parameter(torch.empty(kernel_size, self.head_dim // 2))
        # ceil_mode: an odd side gives ceil(n / stride) like a strided conv (the residual's 1x1
        # downsample), so a 7x7 map becomes 4x4 on both paths of a block
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.tap = AttentionTap()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.qkv.weight, mode="fan_out", nonlinearity="relu")
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        nn.init.normal_(self.rel_rows, std=self.head_dim**-0.5)
        nn.init.normal_(self.rel_cols, std=self.head_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        query, key, value = (
            t.reshape(batch, self.heads, self.head_dim, height, width) for t in self.qkv(x).chunk(3, dim=1)
        )
        output, received = local_attention(
            query * self.scale,
            key,
            value,
            self.rel_rows,
            self.rel_cols,
            self.kernel_size,
            implementation=self.implementation,
            received=self.tap.observed,
        )
        if received is not None:
            self.tap(received)
        return self.pool(output.reshape(batch, self.out_channels, height, width))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"heads={self.heads}, stride={self.stride}"
        )
