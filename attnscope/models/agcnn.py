"""AG-CNN, attention-guided hard cropping (Guan et al. 2018, "Diagnose like a Radiologist").

A global branch classifies the whole image; its last feature map gives a heat map
(max over channels of |activation|, scaled to [0, 1] per image); the largest
connected region at or above ``tau`` gives a box; the box, scaled to input
pixels, crops the *input image* itself, which is resized back to the input size
and classified by a local branch; a fusion layer classifies the concatenation of
both branches' pooled vectors. The paper trains in three stages, which
``stage`` reproduces by freezing the other branches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.models.base import AttnClassifier, ModelConfig
from attnscope.models.registry import create_model, register_class

Stage = Literal["global", "local", "fusion"]
STAGES = ("global", "local", "fusion")
BRANCH_OF_STAGE = {"global": "global_branch", "local": "local_branch", "fusion": "fusion"}


def heat_map(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): max over channels of |activation|, min-max scaled to [0, 1] per image.

    A constant map (no contrast) becomes all ones, so that the whole image is kept.
    """
    heat = features.abs().amax(dim=1)
    low = heat.flatten(1).amin(dim=1)[:, None, None]
    high = heat.flatten(1).amax(dim=1)[:, None, None]
    span = high - low
    return torch.where(span > 0, (heat - low) / span.clamp_min(torch.finfo(heat.dtype).tiny), torch.ones_like(heat))


def largest_region(mask: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool -> the largest 8-connected region of each mask, (B, h, w) bool.

    Labels spread as the minimum over each pixel's neighbourhood inside the mask
    until nothing changes; ties between equal regions go to the first in raster order.
    """
    batch, height, width = mask.shape
    big = height * width + 1
    labels = torch.arange(1, height * width + 1, device=mask.device, dtype=torch.float32).view(1, height, width)
    labels = torch.where(mask, labels.expand(batch, -1, -1), torch.full_like(labels, big).expand(batch, -1, -1))
    for _ in range(height * width):
        spread = -F.max_pool2d(-labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        spread = torch.where(mask, torch.minimum(labels, spread), labels)
        if torch.equal(spread, labels):
            break
        labels = spread
    flat = torch.where(mask, labels, torch.zeros_like(labels)).flatten(1).long()
    sizes = torch.zeros(batch, big, dtype=torch.long, device=mask.device).scatter_add_(1, flat, torch.ones_like(flat))
    sizes[:, 0] = 0  # background
    winner = sizes.argmax(dim=1)  # the smallest label among the largest regions
    return flat.view(batch, height, width) == winner[:, None, None]


def region_boxes(heat: torch.Tensor, tau: float, input_size: tuple[int, int]) -> torch.Tensor:
    """Boxes (B, 4) as (top, left, bottom, right), end-exclusive, in input pixels.

    The box of the largest region of ``heat >= tau``: feature cell ``i`` of ``h``
    covers input rows ``[floor(i H / h), ceil((i + 1) H / h))``.
    """
    region = largest_region(heat >= tau)
    height, width = heat.shape[-2:]
    rows, cols = region.any(dim=2), region.any(dim=1)
    row_index = torch.arange(height, device=heat.device)
    col_index = torch.arange(width, device=heat.device)
    top = torch.where(rows, row_index, height).amin(dim=1)
    bottom = torch.where(rows, row_index, -1).amax(dim=1) + 1
    left = torch.where(cols, col_index, width).amin(dim=1)
    right = torch.where(cols, col_index, -1).amax(dim=1) + 1
    input_h, input_w = input_size
    return torch.stack(
        [
            torch.div(top * input_h, height, rounding_mode="floor"),
            torch.div(left * input_w, width, rounding_mode="floor"),
            -torch.div(-bottom * input_h, height, rounding_mode="floor"),
            -torch.div(-right * input_w, width, rounding_mode="floor"),
        ],
        dim=1,
    )


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box and resize the crop (bilinear) back to the image size."""
    size = images.shape[-2:]
    crops = []
    for image, (top, left, bottom, right) in zip(images, boxes.tolist(), strict=True):
        crop = image[None, :, top:bottom, left:right]
        crops.append(
            crop if crop.shape[-2:] == size else F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
        )
    return torch.cat(crops)


class AGCNN(AttnClassifier):
    """Global branch, local branch on the attention-guided crop, fusion branch.

    ``forward`` returns the logits of the branch being trained (``stage``):
    fusion by default; ``forward_branches`` returns all three and the boxes.
    """

    classifier_name = "fusion"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_chans: int,
        tau: float = 0.7,
        stage: Stage = "fusion",
        backbone_options: dict | None = None,
    ) -> None:
        super().__init__()
        if not 0 < tau <= 1:
            raise ConfigError(f"tau={tau} must lie in (0, 1]: it thresholds a heat map scaled to [0, 1]")
        if backbone.startswith("agcnn"):
            raise ConfigError(f"backbone={backbone!r}: an AG-CNN branch must be a plain classifier")
        self.backbone = backbone
        self.tau = tau
        options = dict(backbone_options or {})
        self.global_branch = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **options)
        self.local_branch = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **options)
        self.num_features = 2 * self.global_branch.num_features
        self.head_dropout = nn.Identity()
        self.fusion = nn.Linear(self.num_features, num_classes)
        self.set_stage(stage)

    def resolve_config(self, config: ModelConfig) -> ModelConfig:
        branch = self.global_branch.default_cfg
        return replace(
            config,
            first_conv=branch.first_conv,
            classifier=branch.classifier,
            url=branch.url,
            input_size=branch.input_size,
            mean=branch.mean,
            std=branch.std,
            cam_target_layer=f"global_branch.{branch.cam_target_layer}",
            pretrained_prefixes=("global_branch.", "local_branch."),
        )

    def set_stage(self, stage: Stage) -> None:
        """Train only ``stage``'s branch: the others' parameters stop requiring gradients, and they stay in
        evaluation mode (batch norm keeps its running statistics, dropout is off) even while the model trains."""
        if stage not in STAGES:
            raise ConfigError(f"stage={stage!r} is not valid; use one of {list(STAGES)}")
        self.stage = stage
        for name in BRANCH_OF_STAGE.values():
            getattr(self, name).requires_grad_(name == BRANCH_OF_STAGE[stage])
        self.train(self.training)

    def train(self, mode: bool = True) -> AGCNN:
        """``nn.Module.train``, except that the frozen branches stay in evaluation mode: a frozen branch
        whose batch norm still moved its statistics, or normalised by the batch's, would not be frozen."""
        super().train(mode)
        for name in BRANCH_OF_STAGE.values():
            if name != BRANCH_OF_STAGE[self.stage]:
                getattr(self, name).train(False)
        return self

    def _branches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both branches' embeddings, the global feature map, the boxes and the crops."""
        global_embedding, global_map = self.global_branch.forward_embedding(x)
        with torch.no_grad():
            boxes = region_boxes(heat_map(global_map.float()), self.tau, (x.shape[-2], x.shape[-1]))
        crops = crop_and_resize(x, boxes)
        local_embedding, _ = self.local_branch.forward_embedding(crops)
        return {
            "global_embedding": global_embedding,
            "global_map": global_map,
            "local_embedding": local_embedding,
            "boxes": boxes,
            "crops": crops,
        }

    def forward_branches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of the three branches (``global``, ``local``, ``fusion``), the ``boxes`` (B, 4) and ``crops``."""
        parts = self._branches(x)
        return {
            "global": self.global_branch.forward_head(parts["global_embedding"]),
            "local": self.local_branch.forward_head(parts["local_embedding"]),
            "fusion": self.fusion(torch.cat([parts["global_embedding"], parts["local_embedding"]], dim=1)),
            "boxes": parts["boxes"],
            "crops": parts["crops"],
        }

    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._branches(x)
        return torch.cat([parts["global_embedding"], parts["local_embedding"]], dim=1), parts["global_map"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stage == "global":
            return self.global_branch(x)
        if self.stage == "local":
            return self.forward_branches(x)["local"]
        return self.forward_head(self.forward_embedding(x)[0])


AGCNN_PAPER = "Guan et al. 2018, Diagnose like a Radiologist (AG-CNN)"


def _register(name: str, default_backbone: str) -> None:
    register_class(ModelConfig(name, AGCNN_PAPER), AGCNN, defaults={"backbone": default_backbone})


_register("agcnn_resnet50", "resnet50")
_register("agcnn_densenet121", "densenet121")  # Guan et al. 2018's second backbone
_register("agcnn_tiny", "resnet_tiny")
