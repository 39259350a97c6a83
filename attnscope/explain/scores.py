"""How well a map localises what matters, and how faithful it is to the model.

Localisation, against a ground-truth mask (or a box made into one):

- pointing game: is the map's maximum inside the mask;
- energy-based pointing game: the share of the map's mass inside the mask;
- Jaccard (IoU) of the map thresholded at 0.5 (AttnMel's measure) with the mask.

Faithfulness (Petsiuk 2018, RISE): deletion removes pixels in the map's order,
most important first, and records the target class's probability; insertion
starts from a blurred image and puts the pixels back in that order. A faithful
map makes the deletion curve fall fast (low AUC) and the insertion curve rise
fast (high AUC). Maps are (B, H, W) at the image's size; masks (B, H, W), 0/1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError


def _check(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 3 or masks.shape[-2:] != maps.shape[-2:] or masks.shape[0] != maps.shape[0]:
        raise ConfigError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be (B, H, W)")
    return masks.reshape(maps.shape).bool()


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4) boxes ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive) -> (B, H, W) 0/1 masks."""
    height, width = size
    ys = torch.arange(height, device=boxes.device)[None, :, None]
    xs = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).float()


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) 1.0 where the map's maximum (its first, in row-major order) lies in the mask; NaN for an empty mask."""
    inside = _check(maps, masks)
    peak = maps.flatten(1).argmax(1)
    hit = inside.flatten(1).gather(1, peak[:, None])[:, 0].float()
    return torch.where(inside.flatten(1).any(1), hit, torch.full_like(hit, math.nan))


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) share of the (non-negative) map's mass inside the mask; NaN for an empty mask or map."""
    inside = _check(maps, masks).flatten(1).float()
    mass = maps.flatten(1).clamp_min(0).float()
    total = mass.sum(1)
    share = (mass * inside).sum(1) / total.clamp_min(1e-12)
    return torch.where((total > 0) & (inside.sum(1) > 0), share, torch.full_like(share, math.nan))


def jaccard(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B,) IoU of ``maps >= threshold`` (maps in [0, 1]) with the mask; NaN for an empty mask."""
    inside = _check(maps, masks).flatten(1)
    chosen = maps.flatten(1) >= threshold
    union = (chosen | inside).sum(1).float()
    iou = (chosen & inside).sum(1).float() / union.clamp_min(1)
    return torch.where(inside.any(1), iou, torch.full_like(iou, math.nan))


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Pointing game, energy and Jaccard per image."""
    return {
        "pointing_game": pointing_game(maps, masks),
        "energy": energy_pointing_game(maps, masks),
        "jaccard": jaccard(maps, masks, threshold),
    }


def target_probability(logits: torch.Tensor, targets: torch.Tensor, activation: str = "auto") -> torch.Tensor:
    """Probability of each row's target class: sigmoid of +-logit for a single logit (or ``sigmoid``
    per label), softmax otherwise."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0] * (targets.to(logits.dtype) * 2 - 1))
    if activation == "sigmoid":
        return torch.sigmoid(logits.gather(1, targets[:, None])[:, 0])
    return torch.softmax(logits.float(), 1).gather(1, targets[:, None])[:, 0]


def blurred(images: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """A strong Gaussian blur (sigma ~ 1/16 of the side): the start of the insertion curve."""
    sigma = sigma or max(images.shape[-1] / 16, 1.0)
    radius = math.ceil(3 * sigma)
    positions = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(positions**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def area_under(curve: torch.Tensor) -> torch.Tensor:
    """(B, S + 1) values at fractions 0, 1/S, ..., 1 -> (B,) trapezoidal area over [0, 1]."""
    steps = curve.shape[1] - 1
    return (curve[:, :-1] + curve[:, 1:]).sum(1) / (2 * steps)


def pixel_rank(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> (B, 1, H, W): each pixel's place in its map's order, highest value first (0)."""
    batch, height, width = maps.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width, device=maps.device).expand(batch, -1))
    return rank.view(batch, 1, height, width)


def _curve(
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    rank: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    activation: str,
    chunk: int,
) -> torch.Tensor:
    """(B, steps + 1) target probabilities as the pixels move from ``start`` to ``end`` in rank order."""
    batch, _, height, width = start.shape
    counts = [round(k * height * width / steps) for k in range(steps + 1)]
    # after k steps the first counts[k] pixels in map order come from `end`, the rest from `start`
    stacked = torch.stack([torch.where(rank < count, end, start) for count in counts], 1).flatten(0, 1)
    repeated = targets.repeat_interleave(steps + 1)
    probabilities = torch.cat(
        [
            target_probability(model(stacked[i : i + chunk]), repeated[i : i + chunk], activation)
            for i in range(0, len(stacked), chunk)
        ]
    )
    return probabilities.view(batch, steps + 1).float()


@dataclass(frozen=True)
class Baselines:
    """What deleted pixels become (default 0: the mean colour) and what insertion starts from (default a blur)."""

    deletion: torch.Tensor | None = None
    insertion: torch.Tensor | None = None


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 16,
    activation: str = "auto",
    baselines: Baselines | None = None,
    chunk: int = 64,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves (B, steps + 1) of the target probability, and their AUCs (B,).

    ``images`` are what the model takes (normalised); the deletion baseline is 0
    there (the mean colour), the insertion baseline a blur of the image, unless
    ``baselines`` gives others. Pixels are taken in the order of each image's map, highest first.
    """
    baselines = baselines or Baselines()
    if steps < 1:
        raise ConfigError(f"steps={steps} must be at least 1")
    batch, _, height, width = images.shape
    if maps.shape != (batch, height, width):
        raise ConfigError(f"maps {tuple(maps.shape)} must be (B, H, W) = ({batch}, {height}, {width})")
    was_training = model.training
    model.eval()
    try:
        zero = torch.zeros_like(images) if baselines.deletion is None else baselines.deletion.expand_as(images)
        blur = blurred(images) if baselines.insertion is None else baselines.insertion.expand_as(images)
        rank = pixel_rank(maps)
        curves = {
            name: _curve(model, start, end, rank, targets, steps, activation, chunk)
            for name, start, end in (("deletion", images, zero), ("insertion", blur, images))
        }
    finally:
        model.train(was_training)
    return {
        "deletion_curve": curves["deletion"],
        "insertion_curve": curves["insertion"],
        "deletion_auc": area_under(curves["deletion"]),
        "insertion_auc": area_under(curves["insertion"]),
    }
