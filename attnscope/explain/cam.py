"""Class activation maps in pure torch: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM.

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
from collections.abc import Sequence
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
    """Common machinery; subclasses say how activations and gradients become a map (``layer_map``)."""

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module | str] | nn.Module | str | None = None):
        self.model = model
        self.layers = resolve_layers(model, target_layers)

    @staticmethod
    @abstractmethod
    def layer_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) activations and gradients -> (B, h, w) map before rectification."""

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) maps in [0, 1] for ``images`` (B, C, H, W)."""
        return self.compute(images, targets).maps

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        if images.dim() != 4:
            raise ConfigError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        captured: dict[str, torch.Tensor] = {}

        def keeper(name: str):
            def hook(module: nn.Module, inputs, output):
                if not isinstance(output, torch.Tensor) or output.dim() != 4:
                    raise ConfigError(f"CAM layer {name!r} must output a (B, K, h, w) tensor")
                captured[name] = output
                # later in-place operations (ReLU(inplace=True)) then change a copy, not what we keep
                return output.clone()

            return hook

        was_training = self.model.training
        handles = [module.register_forward_hook(keeper(name)) for name, module in self.layers.items()]
        try:
            self.model.eval()
            with torch.enable_grad():
                inputs = images.detach().requires_grad_(True)
                logits = self.model(inputs)
                if targets is None:
                    chosen = predicted_classes(logits.detach())
                else:
                    chosen = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
                    if chosen.numel() == 1 and len(images) > 1:
                        chosen = chosen.expand(len(images))
                    if chosen.numel() != len(images):
                        raise ConfigError(f"{chosen.numel()} targets for {len(images)} images")
                scores = target_scores(logits, chosen)
                missing = sorted(set(self.layers) - set(captured))
                if missing:
                    raise ConfigError(f"CAM layer(s) {missing} did not run in the forward pass")
                names = list(self.layers)
                gradients = torch.autograd.grad(scores.sum(), [captured[n] for n in names])
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        size = tuple(images.shape[-2:])
        raw: dict[str, torch.Tensor] = {}
        upsampled = []
        for name, grads in zip(names, gradients, strict=True):
            layer = F.relu(self.layer_map(captured[name].detach().float(), grads.detach().float()))
            raw[name] = layer
            resized = F.interpolate(layer[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            upsampled.append(normalise(resized))
        maps = normalise(torch.stack(upsampled).mean(0)) if len(upsampled) > 1 else upsampled[0]
        return CamResult(maps, raw, chosen.detach(), logits.detach())


class GradCAM(BaseCAM):
    """Selvaraju 2017: channel weights = spatial mean of the gradients."""

    @staticmethod
    def layer_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(1)


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhay 2018: pixel-wise weights from second and third powers of the gradients
    (the closed form for an exponential of the score)."""

    @staticmethod
    def layer_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        squared, cubed = gradients.pow(2), gradients.pow(3)
        total = activations.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * squared + total * cubed
        alpha = squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(1)


class XGradCAM(BaseCAM):
    """Fu 2020: gradients weighted by the normalised activations."""

    @staticmethod
    def layer_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3), keepdim=True)
        weights = (gradients * activations).sum(dim=(2, 3), keepdim=True) / (total + 1e-7)
        return (weights * activations).sum(1)


class LayerCAM(BaseCAM):
    """Jiang 2021: every position weighted by its own positive gradient."""

    @staticmethod
    def layer_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (F.relu(gradients) * activations).sum(1)


CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
}


def create_cam(method: str, model: nn.Module, target_layers=None) -> BaseCAM:
    """A CAM by name: gradcam, gradcam++, xgradcam, layercam."""
    kind = CAM_METHODS.get(method)
    if kind is None:
        raise ConfigError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    return kind(model, target_layers)
