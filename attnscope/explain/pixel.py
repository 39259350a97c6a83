"""Pixel-level attributions by gradients: integrated gradients, SmoothGrad, FullGrad, guided backpropagation
and guided Grad-CAM.

The first two differentiate the target's score (the logit; a single logit scores class 0
by its negative) with respect to the input, over batches of ``batch_size``
modified copies of each image, and return a (B, H, W) map: ``raw`` as computed,
``maps`` scaled to [0, 1] per image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.explain.cam import CamResult, GradCAM, normalise, target_scores
from attnscope.explain.perturbation import InputAttribution, _chunks


class PixelMethod(InputAttribution):
    """Input gradients of many modified copies of each image, in batches."""

    def gradients(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d score(target) / d input for each of ``inputs`` (N, C, H, W), in batches."""
        found = torch.empty_like(inputs)
        for part in _chunks(len(inputs), self.batch_size, self.progress, self.label):
            chunk = inputs[part].detach().requires_grad_(True)
            with torch.enable_grad():
                scores = target_scores(self.model(chunk), targets[part])
                (found[part],) = torch.autograd.grad(scores.sum(), chunk)
        return found


class IntegratedGradients(PixelMethod):
    """Sundararajan et al. 2017: ``(x - x0) * mean_k grad(x0 + a_k (x - x0))`` over ``steps`` points a_k at the
    midpoints of [0, 1], from the baseline x0 = 0 (the dataset's mean, in normalised input); ``raw`` is its sum
    over channels (signed: the attributions add up to score(x) - score(x0)); ``maps`` its positive part."""

    label = "integrated gradients"

    def __init__(self, model: nn.Module, steps: int = 32, batch_size: int = 64, progress: bool = False) -> None:
        super().__init__(model, batch_size, progress)
        if not (isinstance(steps, int) and steps >= 1):
            raise ConfigError(f"steps={steps!r} must be an integer >= 1")
        self.steps = steps

    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        alphas = (torch.arange(self.steps, dtype=images.dtype) + 0.5) / self.steps
        path = alphas[:, None, None, None, None] * images[None]  # (steps, B, C, H, W), baseline 0
        grads = self.gradients(path.flatten(0, 1), targets.repeat(self.steps)).view_as(path)
        return (images * grads.mean(0)).sum(1)

    @staticmethod
    def display(raw: torch.Tensor) -> torch.Tensor:
        return normalise(F.relu(raw))


class SmoothGrad(PixelMethod):
    """Smilkov et al. 2017: the saliency map (sum over channels of |d score / d input|) averaged over
    ``samples`` copies of the image with Gaussian noise of ``noise`` x (max - min) of the image."""

    label = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        samples: int = 25,
        noise: float = 0.15,
        batch_size: int = 64,
        progress: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model, batch_size, progress)
        if not (isinstance(samples, int) and samples >= 1) or not noise >= 0:
            raise ConfigError(f"samples={samples!r} must be an integer >= 1 and noise={noise!r} >= 0")
        self.samples, self.noise, self.seed = samples, noise, seed

    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        spread = images.flatten(1).amax(1) - images.flatten(1).amin(1)
        generator = torch.Generator().manual_seed(self.seed)  # the same noise every call: a map is repeatable
        noise = torch.randn((self.samples, *images.shape), generator=generator, dtype=images.dtype)
        noisy = images[None] + noise * (self.noise * spread)[None, :, None, None, None]
        grads = self.gradients(noisy.flatten(0, 1), targets.repeat(self.samples)).view_as(noisy)
        return grads.abs().sum(2).mean(0)


class FullGrad(PixelMethod):
    """Srinivas & Fleuret 2019, as pytorch-grad-cam computes it: |input gradient x input|, plus for every
    convolution with a bias and every batch norm |output gradient x bias| (a batch norm's bias being
    beta - mean x gamma / sqrt(var + eps)), each summed over channels, resized bilinearly to the input and
    min-max scaled per image, then added up. One forward and one backward pass."""

    label = "fullgrad"

    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        layers = bias_layers(self.model)
        captured: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(_keep(name, captured)) for name, (module, _) in layers.items()]
        try:
            with torch.enable_grad():
                inputs = images.detach().requires_grad_(True)
                scores = target_scores(self.model(inputs), targets)
                names = list(captured)
                grads = torch.autograd.grad(scores.sum(), [inputs, *(captured[n] for n in names)])
        finally:
            for handle in handles:
                handle.remove()
        size = tuple(images.shape[-2:])
        total = normalise((grads[0] * images).abs().sum(1))
        for name, grad in zip(names, grads[1:], strict=True):
            bias = layers[name][1].to(grad.dtype)
            part = (grad * bias[None, :, None, None]).abs().sum(1, keepdim=True)
            total = total + normalise(F.interpolate(part, size=size, mode="bilinear", align_corners=False)[:, 0])
        return total


def bias_layers(model: nn.Module) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every convolution with a bias and every batch norm with running statistics, with its (effective) bias."""
    found: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            found[name] = (module, module.bias.detach())
        elif isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.affine:
            assert module.running_var is not None
            scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
            found[name] = (module, module.bias.detach() - module.running_mean * scale)
    return found


def _keep(name: str, captured: dict[str, torch.Tensor]):
    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        captured[name] = output
        return output.clone()  # later in-place operations change the copy, not the kept output

    return hook


class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU forward; backward passes a gradient only where the input was positive and the gradient is too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp_min(0) * (out > 0)


class _GuidedReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLUFunction.apply(x)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Every ``nn.ReLU`` module of ``model`` swapped for a guided one while the block runs (put back after,
    whatever happens); yields how many were swapped. ReLUs applied as functions are not guided."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, _GuidedReLU())
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class GuidedBackprop(PixelMethod):
    """Springenberg et al. 2015: the input gradient with every ReLU passing back only positive gradients where
    its input was positive; the map sums its absolute value over channels. Only ``nn.ReLU`` modules are
    guided (attnscope's backbones use them; a ReLU called as a function, as inside the grid gate, is not)."""

    label = "guided backprop"

    def attribute(self, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with guided_relus(self.model) as count:
            if count == 0:
                raise ConfigError(f"{type(self.model).__name__} has no nn.ReLU module to guide")
            return self.gradients(images, targets).abs().sum(1)


class GuidedGradCAM:
    """Selvaraju et al. 2017: guided backpropagation times the (upsampled) Grad-CAM of the same class; fine
    detail where the class's regions are."""

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str] | nn.Module | str | None = None,
        eigen_smooth: bool = False,
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        self.cam = GradCAM(model, target_layers, eigen_smooth)
        self.guided = GuidedBackprop(model, batch_size, progress)

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        return self.compute(images, targets).maps

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        cam = self.cam.compute(images, targets)
        guided = self.guided.compute(images, cam.targets)
        product = guided.raw["input"] * cam.maps
        return CamResult(normalise(product), {"input": product}, cam.targets, cam.logits)
