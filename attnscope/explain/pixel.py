"""Pixel-level attributions by gradients: integrated gradients, SmoothGrad and FullGrad.

The first two differentiate the target's score (the logit; a single logit scores class 0
by its negative) with respect to the input, over batches of ``batch_size``
modified copies of each image, and return a (B, H, W) map: ``raw`` as computed,
``maps`` scaled to [0, 1] per image.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.explain.cam import normalise, target_scores
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
