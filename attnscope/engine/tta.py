"""Test-time augmentation by flips: a run's probabilities averaged over an image and its mirrors.

Only the flips the run was trained with are used (``data.augment.hflip``/``vflip`` with
``p > 0``): a model taught that a mirrored image is the same class may be asked about the
mirror, one never shown mirrors may not (a chest X-ray's mirror puts the heart on the
wrong side). Probabilities, not logits, are averaged, so that a binary run's threshold keeps
its meaning; the threshold itself is chosen again on the validation split under the same
views (see :func:`attnscope.engine.inference.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnscope.data.augment import AugmentConfig
from attnscope.errors import ConfigError

# view name -> the image dimensions it flips (images are N, C, H, W)
VIEW_DIMS: dict[str, tuple[int, ...]] = {"none": (), "hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


def flip_views(augment: AugmentConfig) -> tuple[str, ...]:
    """The views of test-time augmentation for a run trained with ``augment``: ``none`` and each
    flip it drew (both flips together where it drew both, as training did at p squared)."""
    if augment.p <= 0 or not (augment.hflip or augment.vflip):
        raise ConfigError(
            "test-time augmentation averages the flips the model was trained with, and this run's "
            f"data.augment drew none (hflip={augment.hflip}, vflip={augment.vflip}, p={augment.p}): "
            "evaluate without --tta"
        )
    views = ["none"]
    views += ["hflip"] if augment.hflip else []
    views += ["vflip"] if augment.vflip else []
    views += ["hvflip"] if augment.hflip and augment.vflip else []
    return tuple(views)


def view(images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` as seen in view ``name`` (a flip along width, height or both)."""
    dims = VIEW_DIMS[name]
    return images.flip(dims) if dims else images


def averaged(predict: Callable[[torch.Tensor], Any], images: torch.Tensor, views: Sequence[str]) -> Any:
    """The mean of ``predict`` over ``views`` of ``images``: a tensor of probabilities, or a
    mapping of them (AG-CNN's branches), averaged per key."""
    outputs = [predict(view(images, name)) for name in views]
    if isinstance(outputs[0], dict):
        return {key: sum(output[key] for output in outputs) / len(views) for key in outputs[0]}
    return sum(outputs) / len(views)
