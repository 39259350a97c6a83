"""Batch augmentation on the training device (kornia), then normalisation.

Batches arrive as uint8 (B, C, H, W). In training, the configured random
transforms run on the whole batch on its device. Rotation, flips, quarter turns
and the resized crop are all affine, so they are composed into one warp per
image (kornia's containers warp once per transform: measured 2.5x slower here),
and images that only flip or turn skip the warp altogether; masks take the same
maps with nearest-neighbour sampling, so they stay aligned by construction. In
evaluation nothing random happens: the output is a deterministic function of the
input. Normalisation uses ImageNet's statistics or the training set's own
(computed once and recorded).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError, check_option, is_number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Which random transforms training uses; each can be turned off.

    Defaults follow the AttnVGG melanoma tutorial's recipe: rotation of up to 10 degrees and flips.
    ``rot90`` adds AttnMel's 90-degree rotations; ``crop_scale`` a random resized
    crop over that area range; ``color_jitter`` brightness/contrast (and, for
    RGB, saturation and a quarter of it as hue). ``p`` is each transform's chance per image;
    ``rotation_p`` the rotation's where it differs (torchvision's ``RandomRotation``, as the
    tutorial uses it, rotates every image: ``rotation_p: 1``).

    Attributes:
        rotation: the largest rotation in degrees (0 for none).
        hflip: flip left-right.
        vflip: flip upside down.
        rot90: turn by multiples of 90 degrees (AttnMel).
        crop_scale: a random resized crop over this range of the image's area, e.g. ``[0.6, 1.0]``; null for none.
        color_jitter: the strength of brightness/contrast (and saturation/hue for RGB) jitter; 0 for none.
        p: each transform's chance per image.
        rotation_p: the rotation's chance where it differs from ``p`` (1: every image, as the tutorial).
    """

    rotation: float = 10.0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False
    crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    p: float = 0.5
    rotation_p: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_config(config: AugmentConfig) -> None:
    """Refuse augmentation values no run could use, naming the option (``data.augment.<option>``)."""
    check_option("data.augment.p", config.p, lambda v: is_number(v) and 0 <= v <= 1, "must lie in [0, 1]")
    check_option(
        "data.augment.rotation_p",
        config.rotation_p,
        lambda v: v is None or (is_number(v) and 0 <= v <= 1),
        "must be null (the same as p) or lie in [0, 1]",
    )
    check_option(
        "data.augment.crop_scale",
        config.crop_scale,
        lambda v: v is None or (len(v) == 2 and all(map(is_number, v)) and 0 < v[0] <= v[1] <= 1),
        "must be null or [low, high] with 0 < low <= high <= 1",
    )
    for key in ("rotation", "color_jitter"):
        check_option(f"data.augment.{key}", getattr(config, key), lambda v: is_number(v) and v >= 0, "must be >= 0")
    for key in ("hflip", "vflip", "rot90"):
        check_option(
            f"data.augment.{key}", getattr(config, key), lambda v: isinstance(v, bool), "must be true or false"
        )


def sample_geometry(batch: int, config: AugmentConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Random geometry per image: rotation angle, flips, quarter turns and crop (scale, offset).

    Drawn from torch's global generator, so ``torch.manual_seed`` reproduces them.
    """

    def chance(p: float = config.p) -> torch.Tensor:
        return torch.rand(batch, device=device) < p

    angle = torch.zeros(batch, device=device)
    if config.rotation:
        rotation_p = config.p if config.rotation_p is None else config.rotation_p
        angle = torch.where(chance(rotation_p), (torch.rand(batch, device=device) * 2 - 1) * config.rotation, angle)
    geometry = {
        "angle": angle,
        "hflip": chance() if config.hflip else torch.zeros(batch, dtype=torch.bool, device=device),
        "vflip": chance() if config.vflip else torch.zeros(batch, dtype=torch.bool, device=device),
        "turns": torch.randint(0, 4, (batch,), device=device)
        if config.rot90
        else torch.zeros(batch, dtype=torch.long, device=device),
        "scale": torch.ones(batch, 2, device=device),
        "offset": torch.zeros(batch, 2, device=device),
    }
    if config.crop_scale is not None:
        low, high = config.crop_scale
        area = low + (high - low) * torch.rand(batch, device=device)
        log_ratio = (torch.rand(batch, device=device) * 2 - 1) * math.log(4 / 3)
        ratio = torch.exp(log_ratio)
        scale = torch.stack([torch.sqrt(area * ratio), torch.sqrt(area / ratio)], dim=1).clamp(max=1.0)
        geometry["scale"] = scale
        geometry["offset"] = (torch.rand(batch, 2, device=device) * 2 - 1) * (1 - scale)
    return geometry


def sampling_matrices(geometry: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 2, 3) maps from output to input coordinates (normalised, [-1, 1]) for ``affine_grid``.

    The output is the input cropped, then flipped, turned and rotated; sampling
    composes the inverse maps in reverse: crop . turns . flips . rotation.
    """
    angle = torch.deg2rad(geometry["angle"])
    batch = angle.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)

    def matrix(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rotation = matrix([[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]])
    flips = matrix(
        [
            [torch.where(geometry["hflip"], -one, one), zero, zero],
            [zero, torch.where(geometry["vflip"], -one, one), zero],
            [zero, zero, one],
        ]
    )
    quarter = geometry["turns"].to(cos.dtype) * (math.pi / 2)
    qc, qs = torch.round(torch.cos(quarter)), torch.round(torch.sin(quarter))
    turns = matrix([[qc, -qs, zero], [qs, qc, zero], [zero, zero, one]])
    scale, offset = geometry["scale"], geometry["offset"]
    crop = matrix([[scale[:, 0], zero, offset[:, 0]], [zero, scale[:, 1], offset[:, 1]], [zero, zero, one]])
    return (crop @ turns @ flips @ rotation)[:, :2].reshape(batch, 2, 3)


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, ..., align_corners=False)`` by broadcasting: (B, H, W, 2).

    affine_grid multiplies a (H*W, 3) grid by each matrix, a batched matmul of
    inner size 3 that is slow on CPUs; two broadcast multiply-adds per
    coordinate give the same grid about ten times faster (measured).
    """
    xs = ((torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1).view(1, 1, 1, width)
    ys = ((torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1).view(1, 1, height, 1)
    a = theta[:, :, :, None, None]
    return (a[:, :, 0] * xs + a[:, :, 1] * ys + a[:, :, 2]).permute(0, 2, 3, 1)


def _exact_one(image: torch.Tensor, hflip: bool, vflip: bool, turns: int) -> torch.Tensor:
    """One image (C, H, W) flipped and turned by index operations: exact, and cheap on uint8."""
    dims = [d for d, chosen in ((-1, hflip), (-2, vflip)) if chosen]
    if dims:
        image = image.flip(dims)
    if turns:
        # torch.rot90 turns counter-clockwise; the sampling map of k turns is its inverse
        image = torch.rot90(image, -turns, dims=(-2, -1))
    return image


def _write(into: torch.Tensor, source: torch.Tensor, normalise: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """``into = source * scale + shift`` (or a plain copy), reading ``source`` in its own dtype.

    The multiply and the add round separately, as ``x.float().mul_(scale).add_(shift)`` does,
    so the result is bit-identical to converting first, in two passes instead of four.
    """
    if normalise is None:
        into.copy_(source)
        return
    scale, shift = normalise
    torch.mul(source, scale, out=into)
    into.add_(shift)


def apply_geometry(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    geometry: dict[str, torch.Tensor],
    normalise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, C, H, W) and masks (B, 1, H, W) -> float, with the sampled geometry.

    Images that only flip or turn get exact index operations, on uint8; the others
    get one affine warp (bilinear for images, nearest for masks). Each image is
    converted to float once, as it is written into the output, so no float tensor
    is gathered or scattered. ``normalise`` = (scale, shift), each (1, C, 1, 1), is
    applied to the images in the same write.
    """
    warp = (geometry["angle"] != 0) | (geometry["scale"] != 1).any(dim=1) | (geometry["offset"] != 0).any(dim=1)
    rows = torch.arange(images.shape[0], device=images.device)
    exact, warped = rows[~warp], rows[warp]
    grid = None
    if len(warped):
        theta = sampling_matrices({k: v[warped] for k, v in geometry.items()}).to(torch.float32)
        grid = sampling_grid(theta, images.shape[-2], images.shape[-1])
    exact_moves = list(
        zip(
            exact.tolist(),
            geometry["hflip"][exact].tolist(),
            geometry["vflip"][exact].tolist(),
            geometry["turns"][exact].tolist(),
            strict=True,
        )
    )
    per_image = None if normalise is None else (normalise[0][0], normalise[1][0])

    def transform(batch: torch.Tensor, mode: str, affine: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device)
        for row, hflip, vflip, turns in exact_moves:
            _write(out[row], _exact_one(batch[row], hflip, vflip, turns), affine)
        if grid is not None:
            sampled = F.grid_sample(batch[warped].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
            for position, row in enumerate(warped.tolist()):
                _write(out[row], sampled[position], affine)
        return out

    return transform(images, "bilinear", per_image), (transform(masks, "nearest", None) if masks is not None else None)


def warp_maps(maps: torch.Tensor, geometry: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float maps (B, C, h, w) moved by the geometry drawn for images, at the maps' own size,
    and how much of each result comes from inside the original (1) rather than the padding (0).

    The sampling matrices are in normalised coordinates, so the same geometry that
    moved a 64 px image moves its 8x8 attention map; gradients flow through.
    """
    warped, _ = apply_geometry(maps, None, geometry)
    inside, _ = apply_geometry(torch.ones_like(maps[:, :1]), None, geometry)
    return warped, inside


class BatchTransform(nn.Module):
    """uint8 batch -> float, augmented (training only) and normalised; masks follow the geometry.

    Geometry (rotation, flips, quarter turns, resized crop) is one affine warp per
    image, only for images that rotate or crop; colour jitter is kornia's.
    """

    def __init__(
        self,
        config: AugmentConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int,
        channels: int,
        with_masks: bool = False,
    ) -> None:
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std have {len(mean)}/{len(std)} values for {channels} channel(s)")
        check_config(config)
        self.config = config
        self.with_masks = with_masks
        self.jitter = None
        if config.color_jitter:
            strength = config.color_jitter
            colour = (strength, strength / 4) if channels == 3 else (0.0, 0.0)
            self.jitter = K.ColorJitter(strength, strength, colour[0], colour[1], p=config.p)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # x_normalised = x_uint8 * scale + shift, one fused pass
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", 1.0 / (255.0 * std_tensor), persistent=False)
        self.register_buffer(
            "shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_tensor, persistent=False
        )

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale, shift = self.scale.to(images.device), self.shift.to(images.device)
        if not train:
            return images.float().mul_(scale).add_(shift), (masks.float() if masks is not None else None)
        geometry = sample_geometry(images.shape[0], self.config, images.device)
        if self.jitter is None:
            return apply_geometry(images, masks, geometry, normalise=(scale, shift))
        x, m = apply_geometry(images, masks, geometry)
        x = self.jitter(x / 255.0) * 255.0
        return x.mul_(scale).add_(shift), m


def dataset_mean_std(
    images: np.ndarray, index: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation, in [0, 1] units, of ``images[index]``.

    Streams ``chunk`` images at a time in float64, so a memory-mapped cache is not loaded whole.
    """
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    count = 0
    for start in range(0, len(index), chunk):
        block = np.asarray(images[np.sort(index[start : start + chunk])], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
