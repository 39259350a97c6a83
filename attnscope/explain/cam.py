"""Class activation maps in pure torch: Grad-CAM and its family, Eigen-CAM, and the machinery they share.

Every CAM here weighs the target layer's activations ``A`` (B, K, h, w) channel by
channel (or position by position) into ``W`` (B, K, h, w); the map is ``ReLU(sum_k W)``,
or with ``eigen_smooth`` ``ReLU`` of the projection of ``W`` on its first principal
component (pytorch-grad-cam's option; the component's sign is chosen to agree with
``sum_k W``, where pytorch-grad-cam leaves it to the SVD). The perturbation CAMs
(Score-CAM, Ablation-CAM) live in :mod:`attnscope.explain.perturbation` on the same base.

``GradCAM(model, target_layers)`` holds no hooks and no tensors between calls:
each call registers forward hooks on the target layers, runs the model once,
takes the gradients of the target scores with ``torch.autograd.grad`` (the
parameters' ``.grad`` are left alone), and removes the hooks in a ``finally``,
so an exception in the forward or the gradient leaves the model as it was, and
building CAM objects in a loop holds nothing alive (pytorch-grad-cam #132/#483).

Targets are class indices per image (default: the predicted class). For a model
with a single logit (binary), class 1 is scored by +logit and class 0 by
-logit, so the negative class's map is not the positive one's
(pytorch-grad-cam #428). Maps are rectified, upsampled bilinearly to the input
size, min-max normalised per image (never inverted), and averaged over target
layers; the raw per-layer maps are returned on request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError


@dataclass
class CamResult:
    """``maps``: (B, H, W) in [0, 1]; ``raw``: per layer, (B, h, w) rectified, before resizing and scaling;
    ``targets``: the class scored per image; ``logits``: the model's output."""

    maps: torch.Tensor
    raw: dict[str, torch.Tensor]
    targets: torch.Tensor
    logits: torch.Tensor


def resolve_layers(
    model: nn.Module, target_layers: Sequence[nn.Module | str] | nn.Module | str | None
) -> dict[str, nn.Module]:
    """Target layers by name: modules or dotted names; None takes the model's ``default_cfg.cam_target_layer``."""
    if target_layers is None:
        default = getattr(getattr(model, "default_cfg", None), "cam_target_layer", "")
        if not default:
            raise ConfigError("this model names no default CAM layer; pass target_layers=[...] (module or name)")
        target_layers = [default]
    if isinstance(target_layers, (str, nn.Module)):
        target_layers = [target_layers]
    if not target_layers:
        raise ConfigError("target_layers is empty; name at least one layer")
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for layer in target_layers:
        if isinstance(layer, str):
            if layer not in modules:
                close = [n for n in modules if n and (n.startswith(layer.rsplit(".", 1)[0]))][:8]
                raise ConfigError(f"the model has no layer {layer!r}; e.g. {close or list(modules)[1:9]}")
            resolved[layer] = modules[layer]
        else:
            if layer not in names:
                raise ConfigError(f"target layer {type(layer).__name__} is not a module of this model")
            resolved[names[layer]] = layer
    return resolved


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Score per image of its target class; a single logit scores class 1 by +logit and class 0 by -logit."""
    if logits.dim() != 2:
        raise ConfigError(f"CAMs need logits of shape (B, classes), got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        if bool(((targets != 0) & (targets != 1)).any()):
            raise ConfigError("a single-logit (binary) model has classes 0 and 1 only")
        sign = targets.to(logits.dtype) * 2 - 1
        return logits[:, 0] * sign
    if bool((targets < 0).any() or (targets >= logits.shape[1]).any()):
        raise ConfigError(f"target classes must lie in [0, {logits.shape[1]})")
    return logits.gather(1, targets[:, None]).squeeze(1)


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) min-max scaled to [0, 1] per image; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


class BaseCAM(ABC):
    """Common machinery; subclasses say how activations (and gradients) become weighted activations."""

    uses_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str] | nn.Module | str | None = None,
        eigen_smooth: bool = False,
    ) -> None:
        self.model = model
        self.layers = resolve_layers(model, target_layers)
        self.eigen_smooth = eigen_smooth

    @abstractmethod
    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        """(B, K, h, w) weighted activations of layer ``name``; their channel sum is the map before its ReLU."""

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) maps in [0, 1] for ``images`` (B, C, H, W)."""
        return self.compute(images, targets).maps

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        context, captured, gradients = self._capture(images, targets)
        size = tuple(images.shape[-2:])
        raw: dict[str, torch.Tensor] = {}
        upsampled = []
        for name in self.layers:
            grads = gradients[name].detach().float() if gradients else None
            weighted = self.weighted(name, captured[name].detach().float(), grads, context)
            layer = F.relu(first_component(weighted) if self.eigen_smooth else weighted.sum(1))
            raw[name] = layer
            resized = F.interpolate(layer[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            upsampled.append(normalise(resized))
        maps = normalise(torch.stack(upsampled).mean(0)) if len(upsampled) > 1 else upsampled[0]
        return CamResult(maps, raw, context.targets, context.logits)

    def _capture(
        self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None
    ) -> tuple[Context, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward pass with the target layers' outputs kept (and their gradients, where used); the hooks
        are removed and the model's mode restored whatever happens."""
        if images.dim() != 4:
            raise ConfigError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        captured: dict[str, torch.Tensor] = {}
        was_training = self.model.training
        handles = [module.register_forward_hook(_keeper(name, captured)) for name, module in self.layers.items()]
        try:
            self.model.eval()
            with torch.set_grad_enabled(self.uses_gradients):
                inputs = images.detach().requires_grad_(self.uses_gradients)
                logits = self.model(inputs)
                chosen = choose_targets(logits, targets, len(images))
                scores = target_scores(logits, chosen)
                missing = sorted(set(self.layers) - set(captured))
                if missing:
                    raise ConfigError(f"CAM layer(s) {missing} did not run in the forward pass")
                gradients: dict[str, torch.Tensor] = {}
                if self.uses_gradients:
                    names = list(self.layers)
                    found = torch.autograd.grad(scores.sum(), [captured[n] for n in names])
                    gradients = dict(zip(names, found, strict=True))
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        context = Context(self.model, images.detach(), chosen.detach(), logits.detach())
        return context, captured, gradients


@dataclass
class Context:
    """What a method may need beyond the activations: the model, the inputs, the targets and the logits."""

    model: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor


def _keeper(name: str, captured: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ConfigError(f"CAM layer {name!r} must output a (B, K, h, w) tensor")
        captured[name] = output
        # later in-place operations (ReLU(inplace=True)) then change a copy, not what we keep
        return output.clone()

    return hook


def choose_targets(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor | None, count: int) -> torch.Tensor:
    """The class to explain per image: ``targets`` (one for all, or one each), else the predicted class."""
    if targets is None:
        return predicted_classes(logits.detach())
    chosen = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if chosen.numel() == 1 and count > 1:
        chosen = chosen.expand(count)
    if chosen.numel() != count:
        raise ConfigError(f"{chosen.numel()} targets for {count} images")
    return chosen


def first_component(weighted: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, h, w): each position's K values, centred over positions, projected on their first
    principal direction; the direction's sign makes the projection agree with the channel sum."""
    batch, _, height, width = weighted.shape
    points = weighted.flatten(2).transpose(1, 2)  # (B, hw, K)
    centred = points - points.mean(dim=1, keepdim=True)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # (B, K)
    projection = (centred @ direction[:, :, None])[..., 0]  # (B, hw)
    agreement = (projection * points.sum(2)).sum(1, keepdim=True)
    return (projection * torch.where(agreement < 0, -1.0, 1.0)).view(batch, height, width)


class ChannelWeightCAM(BaseCAM):
    """A CAM whose weighted activations are ``channel_weights(A, dS/dA) * A``."""

    @staticmethod
    @abstractmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, K, 1, 1) or (B, K, h, w) weights of the activations."""

    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        assert gradients is not None
        return self.channel_weights(activations, gradients) * activations


class GradCAM(ChannelWeightCAM):
    """Selvaraju 2017: channel weights = spatial mean of the gradients."""

    @staticmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3), keepdim=True)


class GradCAMPlusPlus(ChannelWeightCAM):
    """Chattopadhay 2018: pixel-wise weights from second and third powers of the gradients
    (the closed form for an exponential of the score)."""

    @staticmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        squared, cubed = gradients.pow(2), gradients.pow(3)
        total = activations.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * squared + total * cubed
        alpha = squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)


class XGradCAM(ChannelWeightCAM):
    """Fu 2020: gradients weighted by the normalised activations."""

    @staticmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3), keepdim=True)
        return (gradients * activations).sum(dim=(2, 3), keepdim=True) / (total + 1e-7)


class LayerCAM(ChannelWeightCAM):
    """Jiang 2021: every position weighted by its own positive gradient."""

    @staticmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return F.relu(gradients)


class HiResCAM(ChannelWeightCAM):
    """Draelos & Carin 2020: every position weighted by its own gradient (signed), so the map sums, over the
    layer, to what the score's linear part owes each position."""

    @staticmethod
    def channel_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients


class GradCAMElementwise(BaseCAM):
    """pytorch-grad-cam's element-wise Grad-CAM: the ReLU is applied to each gradient x activation product
    before the channel sum, so negative evidence in one channel cannot cancel another's."""

    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        assert gradients is not None
        return F.relu(gradients * activations)


class EigenCAM(BaseCAM):
    """Muhammad & Yeasin 2020: the first principal component of the activations; no gradient, no class
    (the map is the same whatever the target)."""

    uses_gradients = False

    def __init__(self, model: nn.Module, target_layers=None, eigen_smooth: bool = True) -> None:
        super().__init__(model, target_layers, eigen_smooth=True)

    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        return activations


class EigenGradCAM(BaseCAM):
    """pytorch-grad-cam's Eigen-Grad-CAM: the first principal component of gradient x activation, class-specific."""

    def __init__(self, model: nn.Module, target_layers=None, eigen_smooth: bool = True) -> None:
        super().__init__(model, target_layers, eigen_smooth=True)

    def weighted(self, name: str, activations: torch.Tensor, gradients: torch.Tensor | None, context: Context):
        assert gradients is not None
        return gradients * activations
