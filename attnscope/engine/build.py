"""The model a run config describes: shared by training and by opening a finished run."""

from __future__ import annotations

from torch import nn

from attnscope.engine.config import RunConfig
from attnscope.engine.metrics import head_size, task_kind
from attnscope.models import create_model


def build_model(
    config: RunConfig, num_classes: int, multilabel: bool, channels: int, pretrained: bool | str | None = None
) -> nn.Module:
    """``config.model`` with a head for the task (one logit for binary problems).

    ``pretrained`` overrides the config's (a finished run loads its own weights, so it passes False).
    """
    kind = task_kind(num_classes, multilabel)
    return create_model(
        config.model.name,
        num_classes=head_size(kind, num_classes),
        in_chans=channels,
        pretrained=config.model.pretrained if pretrained is None else pretrained,
        **config.model.options,
    )
