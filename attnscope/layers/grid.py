"""Grid attention: the gate of "Learn to Pay Attention" (Jetley 2018) and AttnMel (Yan 2019).

A coarse global feature map ``g`` (for example VGG's pool-5) guides where to look
in a finer local map ``l`` (pool-3, pool-4). Compatibility scores
``c = phi(relu(W_l l + up(W_g g)))`` give one score per position of ``l``; the
attention ``a`` is their softmax over positions (the weights sum to 1 and the
output is the weighted sum of ``l``) or their sigmoid (each position gated in
(0, 1) and the output is the spatial mean of ``a * l``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.tap import AttentionTap

Normalize = Literal["softmax", "sigmoid"]
NORMALIZATIONS = ("softmax", "sigmoid")


class GridAttention(nn.Module):
    """Grid attention (LTPA, AttnMel): a global feature map guides attention over a local one.

    Args:
        local_channels: channels of the local map ``l``.
        global_channels: channels of the global map ``g`` (default: ``local_channels``).
        attn_channels: width of the compatibility space (default: half the larger
            of the two, which gives AttnMel's 256 for its pool-3 and pool-4 gates).
        normalize: ``"softmax"`` over positions (LTPA) or ``"sigmoid"`` (AttnMel).

    ``forward(local, global_)`` returns the pooled local vector (B, local_channels);
    the attention map (B, 1, H, W) at ``local``'s size goes through ``self.tap``.
    The two maps may have any spatial sizes: ``g``'s projection is resized
    bilinearly to ``l``'s size (resizing after the 1x1 projection equals resizing
    before it, and is cheaper).
    """

    def __init__(
        self,
        local_channels: int,
        global_channels: int | None = None,
        attn_channels: int | None = None,
        normalize: Normalize = "softmax",
    ) -> None:
        super().__init__()
        global_channels = local_channels if global_channels is None else global_channels
        attn_channels = max(local_channels, global_channels) // 2 if attn_channels is None else attn_channels
        for option, value in (
            ("local_channels", local_channels),
            ("global_channels", global_channels),
            ("attn_channels", attn_channels),
        ):
            check_positive(option, value)
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize={normalize!r} is not valid; use one of {list(NORMALIZATIONS)}")
        self.normalize = normalize
        self.local_proj = nn.Conv2d(local_channels, attn_channels, kernel_size=1, bias=False)
        self.global_proj = nn.Conv2d(global_channels, attn_channels, kernel_size=1, bias=False)
        self.phi = nn.Conv2d(attn_channels, 1, kernel_size=1, bias=True)
        self.tap = AttentionTap()

    def scores(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """Compatibility scores ``c`` before normalisation, (B, 1, H, W) at ``local``'s size."""
        guide = self.global_proj(global_)
        if guide.shape[-2:] != local.shape[-2:]:
            guide = F.interpolate(guide, size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.phi(F.relu(self.local_proj(local) + guide))

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        if local.shape[0] != global_.shape[0]:
            raise ConfigError(
                f"GridAttention: local and global batches differ ({local.shape[0]} vs {global_.shape[0]})"
            )
        scores = self.scores(local, global_)
        batch, _, height, width = scores.shape
        if self.normalize == "softmax":
            # float32 softmax: in bfloat16 the weights of hundreds of positions
            # would not sum to 1 closely enough to be read as a distribution.
            weights = F.softmax(scores.flatten(1), dim=1, dtype=torch.float32)
            attention = weights.to(local.dtype).view(batch, 1, height, width)
        else:
            attention = torch.sigmoid(scores)
        attention = self.tap(attention)
        pooled = torch.einsum("bchw,bhw->bc", local, attention[:, 0])
        if self.normalize == "sigmoid":
            pooled = pooled / (height * width)
        return pooled

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}"
