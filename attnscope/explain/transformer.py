"""Maps of a vision transformer read from its attention matrices: attention rollout and transformer attribution.

- ``attention_rollout`` (Abnar & Zuidema 2020): each block's attention, its heads fused (mean by default,
  or max, or min, as in Jacob Gildenblat's ``vit-explain``), with the residual connection added as the identity
  and rows renormalised, ``Â = (A + I) / 2``; the blocks multiplied in order, ``R = Â_L ... Â_1``; the map is
  the class token's row over the patches. ``discard_ratio`` zeroes that share of each fused matrix's
  weakest entries first (never the class token's attention to itself). Class-agnostic: every target gets the same map.
- ``transformer_attribution`` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability"): each
  block's attention weighted by its gradient with respect to the target's score, positive part, averaged over
  heads, ``Ā = E_h[(∇A ⊙ A)+]``, accumulated from the identity, ``R ← R + Ā R``; the map is the class
  token's row over the patches. This is the gradient form of their relevance propagation; their CVPR 2021
  method ("transformer attribution" in their code) propagates LRP relevance through every layer instead,
  which needs a relevance rule for each module; the ICCV form needs none and ranks patches alike in
  their own comparison.

Both need a model with transformer attention (:func:`attnscope.models.vit.keep_attention`); on another model
they refuse with a message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnscope.errors import ConfigError
from attnscope.explain.cam import CamResult, choose_targets, normalise, target_scores
from attnscope.models.vit import attention_modules, keep_attention

HEAD_FUSIONS = ("mean", "max", "min")


def _require_transformer(model: nn.Module, method: str) -> None:
    if not attention_modules(model):
        raise ConfigError(
            f"{method} reads a vision transformer's attention; {type(model).__name__} has none "
            "(use a vit_* or deit_* model, or a CAM method)"
        )


def _class_row(relevance: torch.Tensor, grid: tuple[int, int], size: tuple[int, ...], label: str):
    """The class token's row over the patches as (B, h, w) raw maps and (B, H, W) maps in [0, 1]."""
    raw = relevance[:, 0, 1:].reshape(len(relevance), *grid).clamp_min(0)
    resized = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalise(resized), {label: raw}


def rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, N, N): the rollout of per-block attention probabilities (B, heads, N, N), first block first."""
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head_fusion={head_fusion!r}: use one of {', '.join(HEAD_FUSIONS)}")
    if not 0 <= discard_ratio < 1:
        raise ConfigError(f"discard_ratio={discard_ratio} must lie in [0, 1)")
    tokens = attentions[0].shape[-1]
    identity = torch.eye(tokens, dtype=torch.float32, device=attentions[0].device)
    result = identity.expand(len(attentions[0]), tokens, tokens)
    for attention in attentions:
        heads = attention.float()
        fused = heads.mean(1) if head_fusion == "mean" else getattr(heads, head_fusion)(dim=1).values
        if discard_ratio:
            flat = fused.flatten(1).clone()
            weakest = flat.topk(int(flat.shape[1] * discard_ratio), dim=1, largest=False).indices
            flat.scatter_(1, weakest, 0)
            flat[:, 0] = fused[:, 0, 0]  # the class token's attention to itself stays (as vit-explain keeps it)
            fused = flat.view_as(fused)
        mixed = (fused + identity) / 2
        result = (mixed / mixed.sum(-1, keepdim=True)) @ result
    return result


def gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, N, N): Chefer et al.'s accumulation ``R ← R + E_h[(∇A ⊙ A)+] R`` from the identity, first block first."""
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens, dtype=torch.float32, device=attentions[0].device).repeat(len(attentions[0]), 1, 1)
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient.float() * attention.float()).clamp_min(0).mean(1)
        relevance = relevance + weighted @ relevance
    return relevance


class AttentionRollout:
    """Attention rollout (Abnar & Zuidema 2020) of a vision transformer; see the module docstring."""

    uses_gradients = False

    def __init__(self, model: nn.Module, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        _require_transformer(model, "attention_rollout")
        self.model, self.head_fusion, self.discard_ratio = model, head_fusion, discard_ratio

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        was_training = self.model.training
        try:
            self.model.eval()
            with keep_attention(self.model) as modules, torch.no_grad():
                logits = self.model(images)
                kept = [module.kept for module in modules]
                grid = modules[-1].grid
                assert grid is not None and all(a is not None for a in kept)
                relevance = rollout(kept, self.head_fusion, self.discard_ratio)  # type: ignore[arg-type]
        finally:
            self.model.train(was_training)
        maps, raw = _class_row(relevance, grid, tuple(images.shape[-2:]), "attention_rollout")
        return CamResult(maps, raw, choose_targets(logits, targets, len(images)), logits)


class TransformerAttribution:
    """Gradient-weighted attention accumulated over the blocks (Chefer et al., ICCV 2021); see the module
    docstring."""

    uses_gradients = True

    def __init__(self, model: nn.Module) -> None:
        _require_transformer(model, "transformer_attribution")
        self.model = model

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        was_training = self.model.training
        try:
            self.model.eval()
            with keep_attention(self.model) as modules, torch.enable_grad():
                logits = self.model(images.detach().requires_grad_(True))
                chosen = choose_targets(logits, targets, len(images))
                kept = [module.kept for module in modules]
                grid = modules[-1].grid
                assert grid is not None and all(a is not None for a in kept)
                gradients = torch.autograd.grad(target_scores(logits, chosen).sum(), kept)  # type: ignore[arg-type]
                relevance = gradient_rollout([a.detach() for a in kept], gradients)  # type: ignore[union-attr]
        finally:
            self.model.train(was_training)
        maps, raw = _class_row(relevance, grid, tuple(images.shape[-2:]), "transformer_attribution")
        return CamResult(maps, raw, chosen, logits.detach())
