"""Attention pooling (Ilse et al. 2018, attention-based deep multiple-instance learning).

A small MLP scores every position of a feature map, a softmax over the positions
turns the scores into weights that sum to 1, and the pooled vector is the
weighted sum of the positions: global average pooling with learned weights. It is
the pooling of multiple-instance learning in pathology, where a slide's label
comes from a few of its tiles. The gated variant multiplies the MLP's tanh branch
by a sigmoid branch, which Ilse et al. found to learn faster and better.
"""

from __future__ import annotations

import torch
from torch import nn

from attnscope.layers._utils import check_positive
from attnscope.layers.tap import AttentionTap


class AttentionPool2d(nn.Module):
    """Attention pooling (Ilse 2018): softmax-weighted positions, their weights scored by a small MLP.

    ``a = softmax_hw(w^T tanh(V x_hw))`` (gated: ``w^T (tanh(V x_hw) * sigmoid(U x_hw))``);
    :meth:`pool` returns ``sum_hw a_hw x_hw`` (B, C). ``forward`` keeps the map's shape for use inside
    a network: ``x * a * (H * W)``, whose spatial mean is that pooled vector, so a global average pool
    after it is attention pooling.

    Args:
        channels: input channels.
        hidden: width of the scoring MLP (Ilse et al.: 128).
        gated: add the sigmoid gate branch (Ilse et al.'s gated attention).

    The scorer's last layer starts at zero, so the layer starts as global average pooling (and
    ``forward`` as the identity) and learns where to look from there. The weights (B, 1, H, W),
    summing to 1 over the positions, go through ``self.tap``.
    """

    def __init__(self, channels: int, hidden: int = 128, gated: bool = False) -> None:
        super().__init__()
        check_positive("channels", channels)
        check_positive("hidden", hidden)
        self.channels, self.hidden, self.gated = channels, hidden, gated
        self.attention_v = nn.Conv2d(channels, hidden, kernel_size=1)
        self.attention_u = nn.Conv2d(channels, hidden, kernel_size=1) if gated else None
        self.score = nn.Conv2d(hidden, 1, kernel_size=1, bias=False)
        self.tap = AttentionTap()
        nn.init.zeros_(self.score.weight)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling weights (B, 1, H, W): non-negative, summing to 1 over H x W (softmax in float32)."""
        hidden = torch.tanh(self.attention_v(x))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(x))
        scores = self.score(hidden)
        batch, _, height, width = scores.shape
        weights = torch.softmax(scores.reshape(batch, -1).float(), dim=1).to(x.dtype)
        return self.tap(weights.reshape(batch, 1, height, width))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The attention-weighted sum of the positions, (B, C)."""
        return (x * self.weights(x)).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return x * (self.weights(x) * (height * width))

    def extra_repr(self) -> str:
        return f"{self.channels}, hidden={self.hidden}, gated={self.gated}"
