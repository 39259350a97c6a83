"""Losses on logits: focal loss, and attention supervision against lesion masks.

The focal loss (Lin 2017) is written with log-sigmoid / log-softmax only, so it
stays exact at extreme logits (the AttnVGG melanoma tutorial computed BCE on ``sigmoid(logits)`` and
lost everything beyond |logit| ~ 17 in float32). With ``gamma=0`` and no
``alpha`` it is exactly binary cross-entropy / cross-entropy.

Attention supervision (AttnMel's lesion regularisation) compares captured
attention maps with ground-truth masks: a soft Dice loss, or the share of the
map's mass that falls outside the mask ("energy outside"). Two supervisions need
no mask: attention consistency (Guo et al., CVPR 2019), the map of a transformed
image must equal the transformed map of the image; and the self-guided focal
attention loss, which sharpens a map around the positions it already favours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.names import FOCAL_ALPHA_MODES, MASK_SUPERVISION_KINDS

TASKS = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` on logits.

    ``task``: "binary" (logits (B,) or (B, 1), targets 0/1), "multiclass"
    (logits (B, C), integer targets (B,)) or "multilabel" (logits (B, C),
    multi-hot targets (B, C)). ``alpha``: None (no weighting); a scalar, the
    weight of the positive class (binary, multi-label; negatives get 1 - alpha)
    or of every class (multi-class); or a per-class tensor (multi-class: weight of
    the true class; multi-label: positive weight per label). That is Lin et al.
    2017's meaning (``alpha_mode="class"``, torchvision's too); ``alpha_mode="scale"``
    is the AttnVGG melanoma tutorial's: every sample's loss times the scalar ``alpha``,
    positives and negatives alike. Only ``alpha=None`` with ``gamma=0`` is exactly
    (binary) cross-entropy.
    """

    def __init__(
        self,
        alpha: float | torch.Tensor | None = 0.25,
        gamma: float = 2.0,
        task: str = "binary",
        reduction: str = "mean",
        alpha_mode: str = "class",
    ) -> None:
        super().__init__()
        if alpha_mode not in FOCAL_ALPHA_MODES:
            raise ConfigError(f"focal loss alpha_mode={alpha_mode!r}: use one of {FOCAL_ALPHA_MODES}")
        if task not in TASKS:
            raise ConfigError(f"focal loss task={task!r}: use one of {TASKS}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"focal loss reduction={reduction!r}: use one of {REDUCTIONS}")
        if gamma < 0:
            raise ConfigError(f"focal loss gamma={gamma} must be >= 0")
        self.task, self.gamma, self.reduction = task, float(gamma), reduction
        if alpha is not None and not isinstance(alpha, torch.Tensor):
            alpha = torch.tensor(float(alpha))
        if alpha is not None and task == "binary" and alpha.numel() != 1:
            raise ConfigError("binary focal loss takes a scalar alpha (the positive class's weight)")
        if alpha is not None and alpha_mode == "scale" and alpha.numel() != 1:
            raise ConfigError(
                "focal loss alpha_mode='scale' multiplies every sample by one number: give a scalar alpha"
            )
        self.alpha_mode = alpha_mode
        self.alpha: torch.Tensor | None
        self.register_buffer("alpha", None if alpha is None else alpha.float(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "multiclass":
            loss = self._multiclass(logits, target.long())
        else:
            if self.task == "binary":
                logits = logits.reshape(-1)
                target = target.reshape(-1)
            target = target.to(logits.dtype)
            known = ~torch.isnan(target)
            if not bool(known.all()):  # labels left out (uncertain, ignored) add nothing to the loss or its mean
                loss = self._sigmoid(logits, torch.nan_to_num(target, nan=0.0)) * known
                if self.reduction == "mean":
                    return loss.sum() / known.sum().clamp_min(1)
                return _reduce(loss, self.reduction)
            loss = self._sigmoid(logits, target)
        return _reduce(loss, self.reduction)

    def _sigmoid(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # log p_t and log(1 - p_t) from log-sigmoid: exact for any logit
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        log_p_t = target * log_p + (1 - target) * log_not_p
        loss = -log_p_t
        if self.gamma:
            log_not_p_t = target * log_not_p + (1 - target) * log_p
            loss = loss * torch.exp(self.gamma * log_not_p_t)
        if self.alpha is not None:
            alpha = self.alpha.to(logits.device)
            # Lin et al.: alpha for positives, 1 - alpha for negatives; the tutorial: alpha for every sample
            loss = loss * (alpha if self.alpha_mode == "scale" else target * alpha + (1 - target) * (1 - alpha))
        return loss

    def _multiclass(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p_t = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -log_p_t
        if self.gamma:
            # 1 - p_t, computed as -expm1(log p_t) to keep precision when p_t is near 1
            loss = loss * (-torch.expm1(log_p_t)).clamp_min(0).pow(self.gamma)
        if self.alpha is not None:  # a scalar is the same in both meanings here: every class's weight
            alpha = self.alpha.to(logits.device)
            loss = loss * (alpha[target] if alpha.numel() > 1 else alpha)
        return loss


def require_taps(option: str, weights: Mapping[str, float], maps: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights for taps the model does not have, naming the config option and the taps it has."""
    missing = sorted(set(weights) - set(maps))
    if missing:
        raise ConfigError(f"{option} names tap(s) {missing} the model does not have; its taps are: {sorted(maps)}")


def spatial_map(name: str, attention: torch.Tensor) -> torch.Tensor:
    """A captured map as (B, 1, H, W): heads are averaged; channel maps are refused."""
    if attention.dim() != 4:
        raise ConfigError(
            f"attention map {name!r} has shape {tuple(attention.shape)}; mask supervision needs a "
            "spatial map (B, 1 or heads, H, W), not a channel gate"
        )
    return attention.float().mean(dim=1, keepdim=True)


def mask_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) 0/1 mask as the fraction of each cell of a ``size`` grid that it covers."""
    return F.adaptive_avg_pool2d(mask.float(), size)


def dice_loss(attention: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image between a map scaled to peak 1 and a mask of the same size.

    Scaling by the per-image maximum makes softmax maps (which sum to 1) and
    sigmoid maps comparable with a 0/1 mask.
    """
    flat = attention.flatten(1)
    flat = flat / flat.amax(dim=1, keepdim=True).clamp_min(1e-12)
    target = mask.flatten(1)
    overlap = (flat * target).sum(1)
    return 1 - (2 * overlap + eps) / (flat.sum(1) + target.sum(1) + eps)


def energy_outside(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's (non-negative) mass outside the mask, in [0, 1]."""
    flat = attention.flatten(1).clamp_min(0)
    outside = (flat * (1 - mask.flatten(1))).sum(1)
    return outside / flat.sum(1).clamp_min(1e-12)


class AttentionMaskLoss(nn.Module):
    """Weighted sum over taps of a map-vs-mask loss (AttnMel-lesion).

    ``weights`` maps a captured map name to its weight (AttnMel: 0.001 for
    ``pool3``, 0.01 for ``pool4``). The mask is reduced to each map's grid by
    area, so every map is compared at its own resolution. Images whose mask is
    empty carry no localisation target and are left out of the mean.
    """

    def __init__(self, weights: Mapping[str, float], kind: str = "dice") -> None:
        super().__init__()
        if kind not in MASK_SUPERVISION_KINDS:
            raise ConfigError(f"mask supervision kind={kind!r}: use one of {MASK_SUPERVISION_KINDS}")
        if not weights:
            raise ConfigError("supervision needs at least one tap weight, e.g. {'pool3': 0.001, 'pool4': 0.01}")
        self.weights = dict(weights)
        self.kind = kind

    def forward(self, maps: Mapping[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        require_taps("supervision", self.weights, maps)
        has_lesion = masks.flatten(1).amax(1) > 0
        total = masks.new_zeros((), dtype=torch.float32)
        if not bool(has_lesion.any()):
            return total
        for name, weight in self.weights.items():
            attention = spatial_map(name, maps[name])[has_lesion]
            target = mask_to(masks[has_lesion], (attention.shape[-2], attention.shape[-1]))
            per_image = dice_loss(attention, target) if self.kind == "dice" else energy_outside(attention, target)
            total = total + weight * per_image.mean()
        return total


SELF_FOCAL_POSITIONS = 16


def self_focal_error(
    attention: torch.Tensor, threshold: float, ignore_th: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-guided focal attention term per image, and which images it applies to.

    Each (B, 1, h, w) map becomes a share of its mass per position, scaled by h*w/16 so that a
    position holding a sixteenth of the mass scores 1 at any map size: ``p = min(1, q h w / 16)``.
    Positions whose detached ``p`` reaches ``threshold`` times the image's peak are positives; the
    term is the focal loss ``-(1 - p)^gamma log p`` averaged over them, which pulls mass onto them.
    An image whose peak ``p`` is below ``ignore_th`` has no focus yet (a flat map scores 1/16
    everywhere) and is left out, so the loss reinforces a focus the labels started, never a random one.
    """
    height, width = attention.shape[-2:]
    mass = attention.float().clamp_min(0).flatten(1)
    share = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
    p = (share * (height * width / SELF_FOCAL_POSITIONS)).clamp(1e-6, 1.0)
    guide = p.detach()
    peak = guide.amax(1, keepdim=True)
    positives = (guide >= threshold * peak).float()
    focal = -(1 - p).pow(gamma) * p.log()
    per_image = (focal * positives).sum(1) / positives.sum(1).clamp_min(1)
    return per_image, peak[:, 0] >= ignore_th


class SelfFocalAttentionLoss(nn.Module):
    """Weighted sum over taps of the self-guided focal attention loss (:func:`self_focal_error`).

    It needs no mask: each map is its own target, detached, so the loss makes a map more decided
    about what it already looks at. ``weights`` maps a tap to its weight (the source's ``att_wt``).
    """

    def __init__(
        self, weights: Mapping[str, float], threshold: float = 0.5, ignore_th: float = 0.1, gamma: float = 2.0
    ) -> None:
        super().__init__()
        if not weights:
            raise ConfigError("supervision kind self_focal needs at least one tap weight, e.g. {pool3: 0.1}")
        if not 0 < threshold <= 1 or not 0 <= ignore_th <= 1 or gamma < 0:
            raise ConfigError(
                f"self_focal threshold={threshold} must lie in (0, 1], ignore_th={ignore_th} in [0, 1], "
                f"gamma={gamma} >= 0"
            )
        self.weights = dict(weights)
        self.threshold, self.ignore_th, self.gamma = threshold, ignore_th, gamma

    def forward(self, maps: Mapping[str, torch.Tensor], masks: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``maps``; ``masks`` are not read (the same call as :class:`AttentionMaskLoss`)."""
        require_taps("supervision", self.weights, maps)
        total = torch.zeros((), dtype=torch.float32, device=next(iter(maps.values())).device)
        for name, weight in self.weights.items():
            per_image, kept = self_focal_error(
                spatial_map(name, maps[name]), self.threshold, self.ignore_th, self.gamma
            )
            if bool(kept.any()):
                total = total + weight * per_image[kept].mean()
        return total


def standardised(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each (B, 1, H, W) map shifted and scaled to mean 0 and variance 1 under ``weights`` (>= 0)."""
    total = weights.flatten(1).sum(1).clamp_min(1e-12)[:, None, None, None]
    mean = (maps * weights).flatten(1).sum(1)[:, None, None, None] / total
    variance = ((maps - mean).square() * weights).flatten(1).sum(1)[:, None, None, None] / total
    return (maps - mean) / variance.sqrt().clamp_min(1e-6)


def consistency_error(moved: torch.Tensor, of_moved: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per image, the mean squared difference of two maps, each standardised over the cells ``inside``
    (weights in [0, 1]) says the moved map has content: 2 (1 - their weighted Pearson correlation).

    Standardised, because a flat map is trivially consistent: compared on their own scale, sigmoid
    gates learned to open everywhere (0.99 in every cell, measured) and pointed nowhere.
    """
    squared = (standardised(moved, inside) - standardised(of_moved, inside)).square() * inside
    return squared.flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1e-12)


class AttentionConsistencyLoss(nn.Module):
    """Weighted sum over taps of the attention consistency of Guo et al. (CVPR 2019).

    ``maps`` hold the captured maps of the images, ``moved_maps`` those of the same
    images moved by ``move`` (a function that moves (B, 1, h, w) maps the way the
    images were moved, and says which cells of the result came from inside the
    original). The loss asks ``move(map(x)) == map(move(x))`` up to the maps' scale and
    offset (:func:`consistency_error`): attention that follows the content, not the
    position in the frame. It needs no masks.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        if not weights:
            raise ConfigError("supervision.consistency needs at least one tap weight, e.g. {pool3: 1.0}")
        self.weights = dict(weights)

    def forward(
        self,
        maps: Mapping[str, torch.Tensor],
        moved_maps: Mapping[str, torch.Tensor],
        move: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        require_taps("supervision.consistency", self.weights, maps)
        total = torch.zeros((), dtype=torch.float32, device=next(iter(maps.values())).device)
        for name, weight in self.weights.items():
            moved, inside = move(spatial_map(name, maps[name]))
            total = total + weight * consistency_error(moved, spatial_map(name, moved_maps[name]), inside).mean()
        return total
