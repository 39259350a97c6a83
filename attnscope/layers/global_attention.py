"""Global self-attention over all positions of a feature map (non-local style).

Multi-head attention in which every position attends to every other, computed
with ``scaled_dot_product_attention`` (fused kernels, no N x N matrix kept where
the backend avoids it). Queries and keys see a fixed 2-D sine-cosine position
encoding, so the block works at any input size. The output is added to the
input through a learnable scale initialised to zero: inserted into a trained
network, the block starts as the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.tap import AttentionTap

RECEIVED_CHUNK = 1024


def position_encoding_2d(channels: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Sine-cosine position encoding (channels, H, W): half the channels encode rows, half columns."""
    if channels % 4:
        raise ConfigError(f"a 2-D position encoding needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    frequencies = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies  # (H, q)
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies  # (W, q)
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    col_code = torch.cat([cols.sin(), cols.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    return torch.cat([row_code, col_code]).to(dtype=dtype or torch.float32)


def attention_received(query: torch.Tensor, key: torch.Tensor, chunk: int = RECEIVED_CHUNK) -> torch.Tensor:
    """Mean over queries of softmax(q k^T / sqrt(d)): (B, heads, N), summing to 1 over N.

    Queries are taken ``chunk`` at a time so that the full N x N matrix never exists.
    """
    scale = query.shape[-1] ** -0.5
    positions = query.shape[-2]
    total = None
    for start in range(0, positions, chunk):
        scores = query[..., start : start + chunk, :] @ key.transpose(-2, -1) * scale
        part = F.softmax(scores, dim=-1, dtype=torch.float32).sum(dim=-2)
        total = part if total is None else total + part
    assert total is not None
    return (total / positions).to(query.dtype)


class GlobalSelfAttention(nn.Module):
    """Global self-attention over all H x W positions, added through a scale that starts at 0.

    ``x + gamma * proj(MHSA(x))``.

    Args:
        channels: input and output channels (divisible by ``heads`` and by 4).
        heads: attention heads.
        qkv_bias: bias in the query/key/value projections.
        position_encoding: add the 2-D sine-cosine encoding to queries' and keys' inputs.

    While captured, the attention each position receives, averaged over queries,
    (B, heads, H, W), goes through ``self.tap``; it is not computed otherwise.
    """

    def __init__(self, channels: int, heads: int = 8, qkv_bias: bool = False, position_encoding: bool = True) -> None:
        super().__init__()
        check_positive("channels", channels)
        check_positive("heads", heads)
        if channels % heads:
            raise ConfigError(f"channels={channels} must be divisible by heads={heads}")
        if position_encoding and channels % 4:
            raise ConfigError(
                f"channels={channels} must be divisible by 4 for the 2-D position encoding; "
                "pass position_encoding=False or change channels"
            )
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.use_position_encoding = position_encoding
        self.query_key = nn.Conv2d(channels, 2 * channels, kernel_size=1, bias=qkv_bias)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=qkv_bias)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.tap = AttentionTap()

    def position_encoding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The encoding added to queries' and keys' inputs, or zeros when turned off."""
        if not self.use_position_encoding:
            return torch.zeros((), device=like.device, dtype=like.dtype)
        return position_encoding_2d(self.channels, height, width, device=like.device, dtype=like.dtype)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, head_dim), contiguous.

        Contiguity matters: given transposed views, scaled_dot_product_attention
        on the CPU falls back to the math path, which keeps the N x N matrix for
        backward (13x the memory at 28x28, 5x the time, measured).
        """
        batch = t.shape[0]
        return t.reshape(batch, self.heads, self.head_dim, -1).transpose(-2, -1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query, key = self.query_key(x + self.position_encoding(height, width, x)).chunk(2, dim=1)
        query, key, value = self.split_heads(query), self.split_heads(key), self.split_heads(self.value(x))
        attended = F.scaled_dot_product_attention(query, key, value)
        if self.tap.observed:
            self.tap(attention_received(query, key).reshape(batch, self.heads, height, width))
        attended = attended.transpose(-2, -1).reshape(batch, channels, height, width)
        return x + self.gamma * self.proj(attended)

    def extra_repr(self) -> str:
        return f"{self.channels}, heads={self.heads}, position_encoding={self.use_position_encoding}"
