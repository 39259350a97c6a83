"""Vision transformers (Dosovitskiy et al. 2021) and DeiT (Touvron et al. 2021), under timm's parameter names.

The modules and their names follow timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.mlp.fc1``,
``norm``, ``head``), so a timm state dict of the same size loads as it is (``pretrained=/path/to/file``):
``vit_tiny_patch16_224``, ``vit_small_patch16_224`` and the DeiT files of the same sizes. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel where there is one).

Three things make a transformer explainable like attnscope's convolutional networks, with nothing for the
user to write:

- **Attention maps by capture.** The last ``attention_taps`` blocks pass the attention of the class token over
  the patches, averaged over heads, as a (B, 1, h, w) map through a tap (``blocks.N.attn.cls_map``). While a
  tap is watched (or an explanation keeps the attention) the block computes its attention probabilities
  explicitly; otherwise the fused kernel runs and nothing is kept.
- **CAMs on tokens.** Before each block the patch tokens pass through ``token_grids.N``, which lays them out
  as a (B, C, h, w) map and back: every CAM reads its activations and gradients there, so the
  ``reshape_transform`` of pytorch-grad-cam lives inside the model. The default CAM layer is the input of
  the last block (pytorch-grad-cam's advice, ``blocks[-1].norm1``, is this tensor normalised).
- **Attention matrices for rollout and attribution.** :func:`keep_attention` makes every block keep its
  (B, heads, N, N) probabilities, with their gradient, for :mod:`attnscope.explain.transformer`.

Any input size divisible by the patch size works: the position embedding (learnt for a 224 px grid) is
resized bicubically to the input's grid, as timm's ``dynamic_img_size`` does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.tap import AttentionTap
from attnscope.models.base import AttnClassifier, ModelConfig
from attnscope.models.registry import register_class

Grid = tuple[int, int]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches, each projected to ``dim`` channels (timm's ``patch_embed``)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"a {height}x{width} image does not split into {self.patch_size}-pixel patches; use an image "
                f"size divisible by {self.patch_size} (data.image_size) or another patch_size"
            )
        features = self.proj(x)
        return features.flatten(2).transpose(1, 2), (features.shape[-2], features.shape[-1])


class TokenGrid(nn.Module):
    """The patch tokens (B, N, C) laid out as their (B, C, h, w) map: where CAMs read a transformer."""

    def forward(self, patches: torch.Tensor, grid: Grid) -> torch.Tensor:
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)


class ClassTokenMap(nn.Module):
    """The class token's attention over the patches, averaged over heads, as a (B, 1, h, w) map through a tap.

    It owns no weights, so loading a file never takes the attention's own weights for optional ones."""

    def __init__(self) -> None:
        super().__init__()
        self.tap = AttentionTap()

    def forward(self, probabilities: torch.Tensor, grid: Grid) -> torch.Tensor:
        cls_row = probabilities[:, :, 0, 1:].mean(1)  # (B, N - 1)
        return self.tap(cls_row.reshape(cls_row.shape[0], 1, *grid))


class Attention(nn.Module):
    """Multi-head self-attention over the tokens (timm's ``Attention``: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, tapped: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.cls_map = ClassTokenMap() if tapped else None
        self.keep = False  # set by keep_attention(): the probabilities are kept, with their gradient
        self.kept: torch.Tensor | None = None
        self.grid: Grid | None = None

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        observed = self.cls_map is not None and self.cls_map.tap.observed
        if self.keep or observed:
            scores = (q.float() * self.scale) @ k.float().transpose(-2, -1)
            probabilities = scores.softmax(-1)  # in float32, like every softmax map of attnscope
            if self.keep:
                if probabilities.requires_grad:
                    probabilities.retain_grad()
                self.kept, self.grid = probabilities, grid
            if observed and self.cls_map is not None:
                self.cls_map(probabilities, grid)
            out = probabilities.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Two linear layers with a GELU between (timm's ``Mlp``: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then the MLP, each added to its input."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, tapped: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, tapped)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(AttnClassifier):
    """A ViT classifier on the class token (timm's ``global_pool="token"``); see the module docstring.

    Args:
        num_classes: the classifier's outputs.
        in_chans: input channels.
        embed_dim: token width.
        depth: blocks.
        num_heads: attention heads per block.
        patch_size: the side of a patch in pixels.
        mlp_ratio: the MLP's hidden width over ``embed_dim``.
        qkv_bias: biases on the query, key and value projections.
        attention_taps: how many of the last blocks show their class-token attention as a map.
        dropout: dropout before the classifier.
        pos_grid: the side of the patch grid the position embedding is stored for (224 px / patch).
    """

    classifier_name = "head"

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attention_taps: int = 1,
        dropout: float = 0.0,
        pos_grid: int = 14,
    ) -> None:
        super().__init__()
        if not 0 <= attention_taps <= depth:
            raise ConfigError(f"attention_taps={attention_taps} must lie between 0 and depth={depth}")
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        self.token_grids = nn.ModuleList(TokenGrid() for _ in range(depth))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, tapped=index >= depth - attention_taps)
            for index in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's: truncated normal (std 0.02) position embedding and linear weights, small class token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def resolve_config(self, config: ModelConfig) -> ModelConfig:
        """The CAM layer is the input of the last block, whatever the depth."""
        return replace(config, cam_target_layer=f"token_grids.{len(self.blocks) - 1}")

    def position_embedding(self, grid: Grid) -> torch.Tensor:
        """(1, 1 + h w, C): the stored embedding, its patch part resized bicubically where the grid differs."""
        side = math.isqrt(self.pos_embed.shape[1] - 1)
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if grid != (side, side):
            square = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False)
            patch_pos = resized.to(patch_pos.dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """The normalised tokens after the last block (B, 1 + h w, C), and the patch grid."""
        patches, grid = self.patch_embed(x)
        position = self.position_embedding(grid)
        # shape[0], never len(): len() would fix the batch axis of an exported graph
        x = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1) + position
        for token_grid, block in zip(self.token_grids, self.blocks, strict=True):
            spatial = token_grid(x[:, 1:], grid)  # where CAMs read the tokens
            x = block(torch.cat([x[:, :1], spatial.flatten(2).transpose(1, 2)], dim=1), grid)
        return self.norm(x), grid

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, grid = self.forward_tokens(x)
        patches = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *grid)
        return tokens[:, 0], patches


def attention_modules(model: nn.Module) -> list[Attention]:
    """The transformer attention modules of ``model``, in forward order (none for a convolutional network)."""
    return [module for module in model.modules() if isinstance(module, Attention)]


@contextlib.contextmanager
def keep_attention(model: nn.Module) -> Iterator[list[Attention]]:
    """While the block lasts, every attention module keeps its last probabilities (``.kept``, with their
    gradient when the pass records one) and grid; both are dropped when it ends, also on an exception."""
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no transformer attention to keep (a vit_* or deit_* model)")
    for module in modules:
        module.keep = True
    try:
        yield modules
    finally:
        for module in modules:
            module.keep, module.kept, module.grid = False, None, None


SIZES = {"tiny": (192, 3), "small": (384, 6)}  # width, heads; depth 12, patch 16, MLP x4 for both
PAPERS = {
    "vit": "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (ViT)",
    "deit": "Touvron et al. 2021, Training data-efficient image transformers (DeiT)",
}

for _family in ("vit", "deit"):
    for _size, (_width, _heads) in SIZES.items():
        _name = f"{_family}_{_size}_patch16_224"
        register_class(
            ModelConfig(_name, PAPERS[_family], first_conv="patch_embed.proj", classifier="head"),
            VisionTransformer,
            defaults={"embed_dim": _width, "num_heads": _heads, "depth": 12, "patch_size": 16},
        )
