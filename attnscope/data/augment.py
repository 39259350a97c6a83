"""Batch augmentation on the training device (kornia), then normalisation.

Batches arrive as uint8 (B, C, H, W). In training, the configured random
transforms run on the whole batch on its device; masks follow the geometric ones
(nearest-neighbour). In evaluation nothing random happens: the output is a
deterministic function of the input. Normalisation uses ImageNet's statistics or
the training set's own (computed once and recorded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from attnscope.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Which random transforms training uses; each can be turned off.

    Defaults follow the seed recipe: rotation of up to 10 degrees and flips.
    ``rot90`` adds AttnMel's 90-degree rotations; ``crop_scale`` a random resized
    crop over that area range; ``color_jitter`` brightness/contrast (and, for
    RGB, saturation and a quarter of it as hue).
    """

    rotation: float = 10.0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False
    crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    p: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def build_augmentation(config: AugmentConfig, size: int, channels: int, with_masks: bool) -> nn.Module | None:
    """The kornia pipeline for ``config``; None when every transform is off."""
    if not 0 <= config.p <= 1:
        raise ConfigError(f"augment p={config.p} must lie in [0, 1]")
    steps: list[nn.Module] = []
    if config.crop_scale is not None:
        low, high = config.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"augment crop_scale={config.crop_scale} must satisfy 0 < low <= high <= 1")
        steps.append(K.RandomResizedCrop((size, size), scale=(low, high), p=1.0))
    if config.hflip:
        steps.append(K.RandomHorizontalFlip(p=config.p))
    if config.vflip:
        steps.append(K.RandomVerticalFlip(p=config.p))
    if config.rot90:
        steps.append(K.RandomRotation90(times=(0, 3), p=1.0))
    if config.rotation:
        steps.append(K.RandomRotation(degrees=config.rotation, p=config.p))
    if config.color_jitter:
        strength = config.color_jitter
        if channels == 3:
            steps.append(K.ColorJitter(strength, strength, strength, strength / 4, p=config.p))
        else:
            steps.append(K.ColorJitter(strength, strength, 0.0, 0.0, p=config.p))
    if not steps:
        return None
    return K.AugmentationSequential(*steps, data_keys=["input", "mask"] if with_masks else ["input"])


class BatchTransform(nn.Module):
    """uint8 batch -> float, augmented (training only) and normalised; masks follow the geometry."""

    def __init__(self, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...], size: int,
                 channels: int, with_masks: bool = False) -> None:
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std have {len(mean)}/{len(std)} values for {channels} channel(s)")
        self.config = config
        self.with_masks = with_masks
        self.augmentation = build_augmentation(config, size, channels, with_masks)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                train: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.float().div_(255.0)
        m = masks.float() if masks is not None else None
        if train and self.augmentation is not None:
            if self.with_masks and m is not None:
                x, m = self.augmentation(x, m)
            else:
                x = self.augmentation(x)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x, (m.round() if m is not None else None)


def dataset_mean_std(images: np.ndarray, index: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation, in [0, 1] units, of ``images[index]``.

    Streams ``chunk`` images at a time in float64, so a memory-mapped cache is not loaded whole.
    """
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    count = 0
    for start in range(0, len(index), chunk):
        block = np.asarray(images[np.sort(index[start:start + chunk])], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
