"""Stand-alone local self-attention (Ramachandran et al. 2019, "SASA").

Every pixel attends to the k x k neighbourhood around it: per head, the scaled
dot product of its query with each neighbour's key, plus a relative position
term (half the head's channels score the row offset, half the column offset),
softmax over the neighbourhood, weighted sum of the neighbours' values.
Neighbours outside the image are left out of the softmax, not attended as zeros.

Memory. The textbook implementation unfolds keys and values to
(B, C, k*k, H, W) each, and autograd keeps both for the backward pass: k*k
times the memory of the feature map, twice. :func:`neighbourhood_attention` instead
loops over the k*k offsets and reads each neighbour as a shifted *view* of the
zero-padded keys and values, so what autograd keeps is the queries, the padded
keys and values, and the (B, heads, k*k, H, W) attention weights: about
``3 C + 2 heads k^2`` numbers a pixel instead of ``2 C k^2``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.tap import AttentionTap


def neighbourhood_mask(height: int, width: int, kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(k*k, H, W) bool: True where offset ``o`` of pixel (y, x) lies inside the image.

    Offset ``o = a * k + b`` points from (y, x) to (y + a - k//2, x + b - k//2).
    """
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, device=device) - radius
    rows = torch.arange(height, device=device)[None, :] + offsets[:, None]  # (k, H)
    cols = torch.arange(width, device=device)[None, :] + offsets[:, None]  # (k, W)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    mask = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (k, k, H, W)
    return mask.reshape(kernel_size * kernel_size, height, width)


def neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_cols: torch.Tensor,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbourhood attention on (B, heads, d, H, W) tensors.

    ``query`` must already be scaled. ``rel_rows`` and ``rel_cols`` are
    (k, d/2) embeddings of the row and column offsets, scored against the first
    and second half of the query's channels. Returns the output (B, heads, d, H, W)
    and the attention weights (B, heads, k*k, H, W) in the query's dtype.
    """
    *_, head_dim, height, width = query.shape
    half = head_dim // 2
    radius = kernel_size // 2
    pad = (radius, radius, radius, radius)
    key_padded = F.pad(key, pad)
    value_padded = F.pad(value, pad)

    logits = torch.stack(
        [
            (query * key_padded[..., a : a + height, b : b + width]).sum(dim=2)
            for a in range(kernel_size)
            for b in range(kernel_size)
        ],
        dim=2,
    )
    row_scores = torch.einsum("bhdyx,ad->bhayx", query[:, :, :half], rel_rows)
    col_scores = torch.einsum("bhdyx,ad->bhayx", query[:, :, half:], rel_cols)
    relative = (row_scores[:, :, :, None] + col_scores[:, :, None, :]).flatten(2, 3)
    outside = ~neighbourhood_mask(height, width, kernel_size, device=query.device)
    logits = (logits + relative).masked_fill(outside, float("-inf"))
    # The centre offset is always inside, so no softmax row is all -inf.
    attention = F.softmax(logits, dim=2, dtype=torch.float32).to(query.dtype)

    output = None
    for offset in range(kernel_size * kernel_size):
        a, b = divmod(offset, kernel_size)
        term = attention[:, :, offset : offset + 1] * value_padded[..., a : a + height, b : b + width]
        output = term if output is None else output + term
    assert output is not None
    return output, attention


def attention_received(attention: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Attention each pixel receives, averaged over all queries: (B, heads, H, W).

    Each query's weights sum to 1, so the map sums to 1 over H x W.
    """
    *_, positions, height, width = attention.shape
    received = None
    for offset in range(positions):
        a, b = divmod(offset, kernel_size)
        # Query (y, x) with offset (a, b) lands on padded position (y + a, x + b).
        shifted = F.pad(attention[:, :, offset], (b, kernel_size - 1 - b, a, kernel_size - 1 - a))
        received = shifted if received is None else received + shifted
    assert received is not None
    radius = kernel_size // 2
    return received[..., radius : radius + height, radius : radius + width] / (height * width)


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
        output, attention = neighbourhood_attention(
            query * self.scale, key, value, self.rel_rows, self.rel_cols, self.kernel_size
        )
        if self.tap.observed:
            self.tap(attention_received(attention, self.kernel_size))
        return self.pool(output.reshape(batch, self.out_channels, height, width))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"heads={self.heads}, stride={self.stride}"
        )
