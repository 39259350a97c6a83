"""What every attnscope classifier shares: its config and the embedding -> logits split."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.attention_pool import AttentionPool2d
from attnscope.names import MODEL_HEADS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a user (and the rest of attnscope) needs to know to feed and read a model.

    ``first_conv`` and ``classifier`` name the modules that ``in_chans`` and
    ``num_classes`` change, so weight loading can adapt or skip them;
    ``cam_target_layer`` is the default layer for Grad-CAM; ``attention_taps`` the
    names under which ``capture_attention`` returns this model's maps.
    """

    name: str
    paper: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    first_conv: str = ""
    classifier: str = ""
    cam_target_layer: str = ""
    url: str = ""
    pretrained_prefixes: tuple[str, ...] = ("",)
    attention_taps: tuple[str, ...] = ()

    def for_input(self, in_chans: int) -> ModelConfig:
        """The config for ``in_chans`` input channels: grayscale takes the mean of the RGB statistics."""
        if in_chans == len(self.mean):
            return self
        mean = sum(self.mean) / len(self.mean)
        std = sum(self.std) / len(self.std)
        return replace(
            self, input_size=(in_chans, *self.input_size[1:]), mean=(mean,) * in_chans, std=(std,) * in_chans
        )


def make_head_pool(head: str, channels: int) -> AttentionPool2d | None:
    """The pooling of the last feature map that ``head`` names: None for global average pooling, or
    attention pooling (Ilse et al. 2018; ``gated_attn_pool`` its gated variant), captured as ``head_pool``."""
    if head not in MODEL_HEADS:
        raise ConfigError(f"head={head!r}: use one of {', '.join(MODEL_HEADS)}")
    return None if head == "avg" else AttentionPool2d(channels, gated=head == "gated_attn_pool")


class AttnClassifier(nn.Module, metaclass=ABCMeta):
    """Base of the classifiers: ``forward(x) = classifier(dropout(embedding(x)))``.

    Subclasses implement :meth:`forward_embedding`, returning the vector the
    classifier reads and the last spatial feature map (AG-CNN's heat map, CAMs
    and retrieval use them). ``forward`` returns logits only (DESIGN.md).
    """

    default_cfg: ModelConfig
    num_features: int
    head_dropout: nn.Module
    classifier_name = "classifier"  # torchvision's name: "classifier" for VGG, "fc" for ResNet

    @staticmethod
    def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A weights file's state dict under today's names (a family whose published files use older names
        renames them here); the same dict otherwise."""
        return state

    def resolve_config(self, config: ModelConfig) -> ModelConfig:
        """The registered config, completed from this instance's options (AG-CNN takes its backbone's)."""
        return config

    @abstractmethod
    def forward_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B, num_features), last feature map (B, C, h, w))."""

    def global_pool(self, features: torch.Tensor) -> torch.Tensor:
        """The last feature map (B, C, h, w) as a vector (B, C): the mean of its positions, or their
        attention-weighted sum where the model was built with ``head="attn_pool"``."""
        head_pool = getattr(self, "head_pool", None)
        return features.mean(dim=(2, 3)) if head_pool is None else head_pool.pool(features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (B, C, h, w)."""
        return self.forward_embedding(x)[1]

    def forward_head(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits from an embedding."""
        return getattr(self, self.classifier_name)(self.head_dropout(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_embedding(x)[0])
