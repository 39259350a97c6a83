"""Maps by perturbation: Score-CAM and Ablation-CAM (layer CAMs), occlusion sensitivity (pixels).

Each needs one extra forward pass per channel (or per window) and image; those
passes run in batches of ``batch_size`` inputs, under ``torch.no_grad``, with a
progress bar when ``progress`` is set. Hooks are added and removed around each
use, as for the gradient CAMs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from attnscope.errors import ConfigError
from attnscope.explain.cam import (
    BaseCAM,
    CamResult,
    Context,
    choose_targets,
    normalise,
    target_scores,
)
from attnscope.explain.scores import target_probability


def _chunks(count: int, size: int, progress: bool, label: str) -> Iterator[slice]:
    for start in tqdm(range(0, count, size), desc=label, disable=not progress, leave=False, unit="batch"):
        yield slice(start, min(start + size, count))


def _check_batch_size(batch_size: int) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")


class PerturbationCAM(BaseCAM):
    """A layer CAM whose channel weights come from extra forward passes, batched."""

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str] | nn.Module | str | None = None,
        eigen_smooth: bool = False,
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        super().__init__(model, target_layers, eigen_smooth)
        _check_batch_size(batch_size)
        self.batch_size, self.progress = batch_size, progress


class ScoreCAM(PerturbationCAM):
    """Wang et al. 2020: each channel, upsampled to the input and min-max scaled to [0, 1], masks the image;
    its weight is the target's probability on the masked image (as the authors' code: softmax, no baseline).
    A constant channel masks nothing and weighs 0. pytorch-grad-cam instead takes a softmax over channels of
    the masked logits."""

    @torch.no_grad()
    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        batch, channels = activations.shape[:2]
        masks = F.interpolate(activations, size=context.images.shape[-2:], mode="bilinear", align_corners=False)
        flat = masks.flatten(2)
        low, high = flat.min(2).values, flat.max(2).values  # (B, K)
        masks = (masks - low[..., None, None]) / (high - low).clamp_min(1e-12)[..., None, None]
        pairs = torch.nonzero(high > low)  # (image, channel) of every channel that masks something
        weights = torch.zeros(batch, channels)
        for part in _chunks(len(pairs), self.batch_size, self.progress, "score-cam"):
            images, kept = pairs[part, 0], pairs[part, 1]
            masked = context.images[images] * masks[images, kept][:, None]
            probabilities = target_probability(context.model(masked), context.targets[images])
            weights[images, kept] = probabilities.float()
        return weights[..., None, None] * activations


class AblationCAM(PerturbationCAM):
    """Desai & Ramaswamy 2020: a channel's weight is the fall of the target's score when that channel of the
    layer is set to zero, relative to the score: ``(y - y_k) / y``."""

    @torch.no_grad()
    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        batch, channels = activations.shape[:2]
        original = target_scores(context.logits, context.targets).float()
        pairs = torch.cartesian_prod(torch.arange(batch), torch.arange(channels))
        ablated = torch.empty(batch, channels)
        for part in _chunks(len(pairs), self.batch_size, self.progress, "ablation-cam"):
            images, removed = pairs[part, 0], pairs[part, 1]
            handle = self.layers[name].register_forward_hook(_zero_channels(removed))
            try:
                scores = target_scores(context.model(context.images[images]), context.targets[images])
            finally:
                handle.remove()
            ablated[images, removed] = scores.float()
        safe = torch.where(original.abs() < 1e-7, torch.full_like(original, 1e-7), original)
        weights = (original[:, None] - ablated) / safe[:, None]
        return weights[..., None, None] * activations


def _zero_channels(channels: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A forward hook that zeroes channel ``channels[j]`` of the output's ``j``-th image."""

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[torch.arange(len(channels)), channels] = 0
        return output

    return hook


class InputAttribution(ABC):
    """A map of the input's pixels: targets from one forward pass, then ``attribute`` (raw (B, H, W)) and
    ``display`` (the raw map scaled to [0, 1] per image); the model's mode is restored afterwards."""

    label = "pixels"

    def __init__(self, model: nn.Module, batch_size: int = 64, progress: bool = False) -> None:
        _check_batch_size(batch_size)
        self.model, self.batch_size, self.progress = model, batch_size, progress

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        return self.compute(images, targets).maps

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        if images.dim() != 4:
            raise ConfigError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(images)
            chosen = choose_targets(logits, targets, len(images))
            raw = self.attribute(images.detach(), chosen, logits)
        finally:
            self.model.train(was_training)
        return CamResult(self.display(raw), {"input": raw}, chosen, logits)

    @abstractmethod
    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B, H, W) raw map of each image for its target."""

    @staticmethod
    def display(raw: torch.Tensor) -> torch.Tensor:
        return normalise(raw)


class Occlusion(InputAttribution):
    """Zeiler & Fergus 2014 (MONAI's OcclusionSensitivity, Captum's Occlusion): a ``window`` x ``window`` square
    of the (normalised) input is set to 0, the dataset's mean, at every ``stride``; each pixel's value is the
    mean fall of the target's probability over the windows that cover it. ``raw`` keeps the signed map (a
    negative value: hiding the pixel raised the probability); ``maps`` its positive part, scaled to [0, 1].
    ``window`` 0 takes an eighth of the shorter side (at least 2), ``stride`` 0 half the window."""

    label = "occlusion"

    def __init__(
        self, model: nn.Module, window: int = 0, stride: int = 0, batch_size: int = 64, progress: bool = False
    ) -> None:
        super().__init__(model, batch_size, progress)
        if window < 0 or stride < 0:
            raise ConfigError(f"window={window} and stride={stride} must be >= 0 (0: chosen from the image size)")
        self.window, self.stride = window, stride

    def windows(self, height: int, width: int) -> tuple[int, list[tuple[int, int]]]:
        """The window's side and the top-left corner of every window (the last row and column reach the edge)."""
        window = self.window or max(2, min(height, width) // 8)
        window = min(window, height, width)
        stride = self.stride or max(1, window // 2)
        rows = sorted({*range(0, height - window + 1, stride), height - window})
        columns = sorted({*range(0, width - window + 1, stride), width - window})
        return window, [(row, column) for row in rows for column in columns]

    @torch.no_grad()
    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        window, corners = self.windows(*images.shape[-2:])
        falls = self._falls(images, targets, target_probability(logits, targets), window, corners)
        total = torch.zeros(len(images), *images.shape[-2:])
        covered = torch.zeros(images.shape[-2:])
        for number, (row, column) in enumerate(corners):
            total[:, row : row + window, column : column + window] += falls[:, number, None, None]
            covered[row : row + window, column : column + window] += 1
        return total / covered

    @staticmethod
    def display(raw: torch.Tensor) -> torch.Tensor:
        return normalise(F.relu(raw))

    def _falls(
        self, images: torch.Tensor, chosen: torch.Tensor, before: torch.Tensor, window: int, corners: list
    ) -> torch.Tensor:
        """(B, windows): the fall of each image's target probability with each window hidden."""
        pairs = torch.cartesian_prod(torch.arange(len(images)), torch.arange(len(corners)))
        falls = torch.empty(len(images), len(corners))
        for part in _chunks(len(pairs), self.batch_size, self.progress, "occlusion"):
            which, hidden = pairs[part, 0], pairs[part, 1]
            occluded = images[which].clone()
            for position, number in enumerate(hidden.tolist()):
                row, column = corners[number]
                occluded[position, :, row : row + window, column : column + window] = 0
            after = target_probability(self.model(occluded), chosen[which])
            falls[which, hidden] = (before[which] - after).float()
        return falls
