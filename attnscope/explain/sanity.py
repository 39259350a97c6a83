"""Sanity checks of saliency maps (Adebayo et al. 2018): does a map depend on the weights, and on the image?

A map that looks the same after the model's weights are replaced by random ones
explains nothing the model learnt; a map that looks the same for every image
explains nothing about the image (an attention gate that always lights the same
corner). Both happen, and per-image min-max scaling makes them look confident.

- **Model-parameter randomisation**, cascading from the top: the layers with
  weights are re-initialised from the last one (the classifier) downwards, a
  quarter of them at a time; after each step the maps of the same images (for
  the same classes) are compared with the trained model's by Spearman's rank
  correlation and SSIM. A method whose maps after full randomisation still
  correlate above :data:`WEIGHTS_LIMIT` with the trained ones fails: its map
  barely depends on the weights.
- **Image independence**: each map's Pearson correlation with the mean map of
  the images, averaged. Above :data:`IMAGE_LIMIT` the method fails: its map
  barely depends on the image.

The limits: Adebayo et al. report rank correlations near 0 (below about 0.3)
after randomisation for the methods that pass, and above 0.7 for those that
fail (guided backpropagation); 0.5 lies between. A mean correlation of 0.9 with
the average map means nine tenths of each map's variation is the same across
images: on lesions at different places it should be far lower.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

WEIGHTS_LIMIT = 0.5
IMAGE_LIMIT = 0.9
CASCADE_STEPS = 4


def spearman(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean over images of the Spearman rank correlation of two (B, H, W) maps; NaN where a map is constant."""
    values = []
    for a, b in zip(first.flatten(1).double().numpy(), second.flatten(1).double().numpy(), strict=True):
        if a.std() == 0 or b.std() == 0:
            values.append(math.nan)
            continue
        values.append(float(stats.spearmanr(a, b).statistic))
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def ssim(first: torch.Tensor, second: torch.Tensor, window: int = 7) -> float:
    """Mean structural similarity of two (B, H, W) maps in [0, 1] (Wang et al. 2004, a uniform window)."""
    a, b = first[:, None].double(), second[:, None].double()
    size = min(window, a.shape[-1], a.shape[-2])
    mean_a, mean_b = F.avg_pool2d(a, size, 1), F.avg_pool2d(b, size, 1)
    var_a = F.avg_pool2d(a * a, size, 1) - mean_a**2
    var_b = F.avg_pool2d(b * b, size, 1) - mean_b**2
    covariance = F.avg_pool2d(a * b, size, 1) - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def image_independence(maps: torch.Tensor) -> float:
    """Mean Pearson correlation of each (H, W) map of a (B, H, W) batch with the batch's mean map (a constant map
    counts as 1: it is the same for every image)."""
    flat = maps.flatten(1).double()
    mean = flat.mean(0)
    values = []
    for row in flat:
        if row.std() == 0 or mean.std() == 0:
            values.append(1.0)
            continue
        values.append(float(torch.corrcoef(torch.stack([row, mean]))[0, 1]))
    return sum(values) / len(values)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that hold weights of their own, in the order they were defined (input side first)."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


def randomised_cascade(model: nn.Module, steps: int = CASCADE_STEPS, seed: int = 0) -> list[nn.Module]:
    """Copies of ``model`` with its weighted layers re-initialised from the top: the last quarter, half, three
    quarters, all (for ``steps`` = 4), each with fresh random weights of its own initialisation."""
    layers = weighted_layers(model)
    copies = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for step in range(1, steps + 1):
            randomised = copy.deepcopy(model).eval()
            chosen = weighted_layers(randomised)[len(layers) - math.ceil(len(layers) * step / steps) :]
            for layer in chosen:
                _reinitialise(layer)
            copies.append(randomised)
    finally:
        torch.random.set_rng_state(generator_state)
    return copies


def _reinitialise(layer: nn.Module) -> None:
    if hasattr(layer, "reset_parameters"):
        layer.reset_parameters()  # type: ignore[operator]
        return
    with torch.no_grad():
        for parameter in layer.parameters(recurse=False):
            parameter.normal_(0.0, 0.02)


@dataclass
class MethodSanity:
    """One method's checks: rank correlation and SSIM with the trained maps after each cascade step, and its maps'
    correlation with their mean; whether it passes each."""

    spearman: list[float]
    ssim: list[float]
    image_correlation: float
    depends_on_weights: bool = field(init=False)
    depends_on_image: bool = field(init=False)

    def __post_init__(self) -> None:
        last = self.spearman[-1] if self.spearman else math.nan
        # NaN: a map made constant by the randomisation, which changed it; a constant trained map fails below
        self.depends_on_weights = not last > WEIGHTS_LIMIT
        self.depends_on_image = not self.image_correlation > IMAGE_LIMIT

    @property
    def passed(self) -> bool:
        return self.depends_on_weights and self.depends_on_image

    def flag(self) -> str:
        """What a reader is told: empty when both checks pass."""
        checks = (("the image", self.depends_on_image), ("the weights", self.depends_on_weights))
        problems = [what for what, ok in checks if not ok]
        return "" if not problems else f"this map barely depends on {' or '.join(problems)}"


@dataclass
class Sanity:
    """The sanity checks of every method on the same images: method -> :class:`MethodSanity`."""

    images: int
    methods: dict[str, MethodSanity]

    def flags(self) -> dict[str, str]:
        return {method: result.flag() for method, result in self.methods.items()}

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "limits": {"weights_spearman": WEIGHTS_LIMIT, "image_correlation": IMAGE_LIMIT},
            "methods": {
                name: {
                    "spearman": r.spearman,
                    "ssim": r.ssim,
                    "image_correlation": r.image_correlation,
                    "depends_on_weights": r.depends_on_weights,
                    "depends_on_image": r.depends_on_image,
                    "flag": r.flag(),
                }
                for name, r in self.methods.items()
            },
        }


def sanity_checks(trained: dict[str, torch.Tensor], randomised: list[dict[str, torch.Tensor]]) -> Sanity:
    """The checks from maps already computed: ``trained`` label -> (B, H, W) maps in [0, 1], and the same labels'
    maps of each cascade step's randomised model."""
    methods = {}
    for label, maps in trained.items():
        steps = [step[label] for step in randomised if label in step]
        methods[label] = MethodSanity(
            [spearman(maps, other) for other in steps], [ssim(maps, other) for other in steps],
            image_independence(maps),
        )  # fmt: skip
    return Sanity(len(next(iter(trained.values()))) if trained else 0, methods)
