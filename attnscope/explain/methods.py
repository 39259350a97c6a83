"""Every map method by name, its options, and ``aug_smooth`` for any of them.

``create_cam(name, model, target_layers, **options)`` builds one; every method
has ``compute(images, targets) -> CamResult``. Layer CAMs take ``target_layers``
(default: the model's) and ``eigen_smooth``; the perturbation and pixel methods
take ``batch_size`` and ``progress``; the others take what their class names
(``steps``, ``samples``, ``noise``, ``window``, ``stride``). ``aug_smooth`` wraps
any method in :class:`AugSmooth`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from attnscope import names
from attnscope.errors import ConfigError
from attnscope.explain.cam import (
    CamResult,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementwise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    choose_targets,
    normalise,
)
from attnscope.explain.perturbation import AblationCAM, Occlusion, ScoreCAM
from attnscope.explain.pixel import FullGrad, GuidedBackprop, GuidedGradCAM, IntegratedGradients, SmoothGrad
from attnscope.explain.transformer import AttentionRollout, TransformerAttribution
from attnscope.registry import Registry, parameter_names

# a layer CAM takes ``target_layers`` and ``eigen_smooth``; a pixel method maps the input's pixels
CAM_METHODS = names.CAM_METHODS
PIXEL_METHODS = names.PIXEL_METHODS
MAP_METHODS = Registry[type](
    "map method",
    {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
        "gradcam_elementwise": GradCAMElementwise,
        "eigencam": EigenCAM,
        "eigengradcam": EigenGradCAM,
        "scorecam": ScoreCAM,
        "ablationcam": AblationCAM,
        "guided_gradcam": GuidedGradCAM,
        "occlusion": Occlusion,
        "integrated_gradients": IntegratedGradients,
        "smoothgrad": SmoothGrad,
        "fullgrad": FullGrad,
        "guided_backprop": GuidedBackprop,
        "attention_rollout": AttentionRollout,
        "transformer_attribution": TransformerAttribution,
    },
    options=lambda cls: [name for name in parameter_names(cls) if name not in ("model", "target_layers")],
    listed=(*CAM_METHODS, *PIXEL_METHODS, *names.TRANSFORMER_METHODS),
)
# options for the methods that batch extra passes; the others take them and leave them
SHARED_OPTIONS = ("batch_size", "progress")


class MapMethod(Protocol):
    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult: ...


class AugSmooth:
    """Test-time augmentation (pytorch-grad-cam's ``aug_smooth``): the map of each of the image, its mirror
    image, and both multiplied by 0.9 and 1.1, mirrored back and averaged; the targets are those of the image
    itself, so every view explains the same class."""

    VIEWS = tuple((flip, factor) for flip in (False, True) for factor in (1.0, 0.9, 1.1))

    def __init__(self, method: MapMethod) -> None:
        self.method = method

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        return self.compute(images, targets).maps

    def compute(self, images: torch.Tensor, targets: Sequence[int] | torch.Tensor | None = None) -> CamResult:
        first = self.method.compute(images, targets)
        chosen = choose_targets(first.logits, first.targets, len(images))
        maps, raws = [first.maps], [first.raw]
        for flip, factor in self.VIEWS[1:]:
            view = images.flip(-1) if flip else images
            result = self.method.compute(view * factor, chosen)
            maps.append(result.maps.flip(-1) if flip else result.maps)
            raws.append({k: v.flip(-1) if flip else v for k, v in result.raw.items()})
        raw = {name: torch.stack([r[name] for r in raws]).mean(0) for name in first.raw}
        return CamResult(normalise(torch.stack(maps).mean(0)), raw, chosen, first.logits)


def create_cam(
    method: str,
    model: nn.Module,
    target_layers: Sequence[nn.Module | str] | nn.Module | str | None = None,
    aug_smooth: bool = False,
    **options: Any,
) -> MapMethod:
    """A map method by name (:data:`MAP_METHODS`), with its options; ``aug_smooth`` wraps it in :class:`AugSmooth`."""
    kind = MAP_METHODS.get(method)
    accepted = MAP_METHODS.options(method)
    MAP_METHODS.check_options(
        method,
        [name for name, value in options.items() if name not in SHARED_OPTIONS and value not in (None, False)],
        hint="" if method in CAM_METHODS else "(it maps pixels or attention, not a layer: no eigen_smooth)",
    )
    given = {name: value for name, value in options.items() if name in accepted and value is not None}
    if method in CAM_METHODS:
        built = kind(model, target_layers, **given)
    elif target_layers:
        what = "a transformer's attention" if method in names.TRANSFORMER_METHODS else "the input's pixels"
        raise ConfigError(f"{method} maps {what}; it takes no target layers")
    else:
        built = kind(model, **given)
    return AugSmooth(built) if aug_smooth else built
