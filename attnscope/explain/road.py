"""Faithfulness by removing pixels without leaving a trace (ROAD), and by multiplying the image by its map.

ROAD (Rong et al. 2022, remove and debias): the most relevant pixels of a map (MoRF)
or the least relevant (LeRF), at several percentiles, are removed and filled by
noisy linear imputation: each removed pixel takes the weighted mean of its eight
neighbours (1/6 each side, 1/12 each corner, the weights of the authors' code and of
pytorch-grad-cam), found for all removed pixels at once by solving that linear
system (conjugate gradients, batched over images and channels), plus Gaussian
noise of ``noise``. Unlike filling with a constant, the filled image leaks no shape
of the mask to the model. A faithful map gives a low MoRF score (the target's
probability falls when what the map marks is gone) and a high LeRF score.

Confidence change (Chattopadhay et al. 2018, as pytorch-grad-cam's
``CamMultImageConfidenceChange``): the image multiplied by its map; the drop is
``max(0, p - p_map) / p`` per image, the increase ``p_map > p``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.explain.scores import pixel_rank, target_probability

PERCENTILES = (20, 40, 60, 80)
NOISE = 0.01


def _neighbour_sum(values: torch.Tensor) -> torch.Tensor:
    """(N, H, W): each pixel's 8 neighbours weighted 1/6 a side and 1/12 a corner (absent outside the image), by
    shifted slices: on a CPU several times faster than a one-channel convolution."""
    padded = F.pad(values, (1, 1, 1, 1))
    height, width = values.shape[-2:]
    side = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    corner = padded[:, :-2, :-2] + padded[:, :-2, 2:] + padded[:, 2:, :-2] + padded[:, 2:, 2:]
    return side[:, :height, :width] / 6 + corner[:, :height, :width] / 12


def _solve(known: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Conjugate gradients for the removed pixels (``mask`` 1) of (N, H, W) ``known``, from ``start``."""
    degree = _neighbour_sum(torch.ones_like(known[:1]))

    def apply(values: torch.Tensor) -> torch.Tensor:
        return mask * (degree * values - _neighbour_sum(values))

    target = mask * _neighbour_sum(known * (1 - mask))
    solution = mask * start
    residual = target - apply(solution)
    direction = residual.clone()
    squared = (residual**2).sum((1, 2))
    limit = tolerance**2 * (target**2).sum((1, 2)).clamp_min(1e-30)
    for _ in range(2 * sum(known.shape[-2:]) + 32):  # converged well within this from a coarse start
        if bool((squared <= limit).all()):
            break
        product = apply(direction)
        curvature = (direction * product).sum((1, 2))
        step = torch.where(curvature > 0, squared / curvature.clamp_min(1e-30), torch.zeros_like(squared))
        solution = solution + step[:, None, None] * direction
        residual = residual - step[:, None, None] * product
        new = (residual**2).sum((1, 2))
        direction = residual + (new / squared.clamp_min(1e-30))[:, None, None] * direction
        squared = new
    return solution


def _coarse_to_fine(known: torch.Tensor, mask: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The solution on a grid half the size, solved the same way, upsampled: a start from which the fine
    grid needs few iterations (holes span many pixels, and plain CG crosses them a pixel a step)."""
    height, width = known.shape[-2:]
    if min(height, width) < 16:
        return torch.zeros_like(known)
    kept = 1 - mask
    weight = F.avg_pool2d(kept[:, None], 2, ceil_mode=True)[:, 0]
    coarse_known = F.avg_pool2d((known * kept)[:, None], 2, ceil_mode=True)[:, 0] / weight.clamp_min(1e-6)
    coarse_mask = (weight == 0).to(known.dtype)  # a coarse pixel is known where any of its fine pixels is
    coarse = (
        coarse_known * (1 - coarse_mask)
        + _solve(coarse_known, coarse_mask, _coarse_to_fine(coarse_known, coarse_mask, tolerance), tolerance)
        * coarse_mask
    )
    return F.interpolate(coarse[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def linear_imputation(images: torch.Tensor, removed: torch.Tensor, tolerance: float = 1e-4) -> torch.Tensor:
    """``images`` (B, C, H, W) with the pixels of ``removed`` (B, H, W), True where removed, replaced so that each
    equals the weighted mean of its neighbours (the kept pixels fixed, neighbours outside the image absent).

    Solved by conjugate gradients from a coarse-to-fine start; the iteration stops when the residual has fallen
    below ``tolerance`` of the right-hand side: the values are then within about 1e-3 of the exact solution, ten
    times below ROAD's noise of 0.01."""
    batch, channels, height, width = images.shape
    known = images.reshape(batch * channels, height, width).float()
    mask = removed.to(known.dtype).repeat_interleave(channels, 0)
    solution = _solve(known, mask, _coarse_to_fine(known, mask, tolerance), tolerance)
    return (known * (1 - mask) + solution * mask).view(batch, channels, height, width).to(images.dtype)


def noisy_linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, noise: float = NOISE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`linear_imputation` plus Gaussian noise of standard deviation ``noise`` on the removed pixels."""
    filled = linear_imputation(images, removed)
    jitter = torch.randn(images.shape, generator=generator, dtype=images.dtype) * noise
    return filled + jitter * removed[:, None].to(images.dtype)


@torch.no_grad()
def road(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    percentiles: tuple[int, ...] = PERCENTILES,
    activation: str = "auto",
    noise: float = NOISE,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """ROAD curves (B, P) of the target's probability with the top (MoRF) or bottom (LeRF) ``percentiles`` % of
    each map's pixels removed and imputed, and their means (B,): ``road_morf`` (lower is better), ``road_lerf``."""
    if not percentiles or any(not 0 < p < 100 for p in percentiles):
        raise ConfigError(f"percentiles={percentiles} must lie strictly between 0 and 100")
    batch, _, height, width = images.shape
    if maps.shape != (batch, height, width):
        raise ConfigError(f"maps {tuple(maps.shape)} must be (B, H, W) = ({batch}, {height}, {width})")
    rank = pixel_rank(maps)[:, 0]  # 0: the most relevant pixel
    generator = torch.Generator().manual_seed(seed)
    curves: dict[str, list[torch.Tensor]] = {"morf": [], "lerf": []}
    was_training = model.training
    model.eval()
    try:
        for percentile in percentiles:
            count = round(percentile / 100 * height * width)
            for order, removed in (("morf", rank < count), ("lerf", rank >= height * width - count)):
                filled = noisy_linear_imputation(images, removed, noise, generator)
                curves[order].append(target_probability(model(filled), targets, activation).float())
    finally:
        model.train(was_training)
    morf, lerf = torch.stack(curves["morf"], 1), torch.stack(curves["lerf"], 1)
    return {"road_morf_curve": morf, "road_lerf_curve": lerf, "road_morf": morf.mean(1), "road_lerf": lerf.mean(1)}


@torch.no_grad()
def confidence_change(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, activation: str = "auto"
) -> dict[str, torch.Tensor]:
    """Per image: ``drop_in_confidence`` max(0, p - p_map) / p and ``increase_in_confidence`` (1.0 where
    p_map > p), p_map being the target's probability on the image multiplied by its map (maps in [0, 1])."""
    was_training = model.training
    model.eval()
    try:
        before = target_probability(model(images), targets, activation).float()
        after = target_probability(model(images * maps[:, None]), targets, activation).float()
    finally:
        model.train(was_training)
    return {
        "drop_in_confidence": (before - after).clamp_min(0) / before.clamp_min(1e-12),
        "increase_in_confidence": (after > before).float(),
    }
